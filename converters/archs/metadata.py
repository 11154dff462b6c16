"""Per-architecture GGUF metadata: HF config.json fields -> the `{arch}.*` keys llama.cpp reads.

References: llama.cpp's converter as vendored in llama-cpp-python 0.3.36
(conversion/base.py `TextModel.set_gguf_parameters`, conversion/{llama,qwen,olmo,deepseek}.py)
and its loader (src/models/deepseek2.cpp for what DeepSeek needs); key names are the gguf
package's `Keys` constants. Where a config is silent or llama.cpp's converter guesses,
the value is derived from what the architecture means (see DeepSeek below).
"""

from __future__ import annotations

from collections.abc import Callable

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, ExpertGatingFuncType, Keys

from converters.core.errors import UnsupportedArchitecture

LLM, ATTN, ROPE = Keys.LLM, Keys.Attention, Keys.Rope


def expert_count(config: dict) -> int:
    """Routed experts per MoE layer, whichever field the config names them in (Qwen3-MoE
    says num_experts when published, num_local_experts when saved by transformers 5)."""
    keys = ("num_experts", "num_local_experts", "n_routed_experts")
    return int(next((config[k] for k in keys if config.get(k)), 0))


def rope_scaling(config: dict) -> dict:
    """The rope scaling dict whichever spelling the config uses (legacy or transformers 5)."""
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    params = dict(params)
    if "rope_type" not in params and "type" in params:
        params["rope_type"] = params["type"]
    return params


def rope_theta(config: dict) -> float | None:
    theta = config.get("rope_theta")
    if theta is None:
        theta = (config.get("rope_parameters") or {}).get("rope_theta")
    return float(theta) if theta is not None else None


def common_metadata(config: dict, arch: str) -> list[tuple[str, object]]:
    """What llama.cpp's TextModel.set_gguf_parameters writes for every text model."""

    def key(template: str) -> str:
        return template.format(arch=arch)

    meta: list[tuple[str, object]] = [
        (key(LLM.BLOCK_COUNT), int(config["num_hidden_layers"])),
        (key(LLM.CONTEXT_LENGTH), int(config.get("max_position_embeddings") or 4096)),
        (key(LLM.EMBEDDING_LENGTH), int(config["hidden_size"])),
        (key(LLM.FEED_FORWARD_LENGTH), int(config["intermediate_size"])),
        (key(ATTN.HEAD_COUNT), int(config["num_attention_heads"])),
        (
            key(ATTN.HEAD_COUNT_KV),
            int(config.get("num_key_value_heads") or config["num_attention_heads"]),
        ),
        (key(ATTN.LAYERNORM_RMS_EPS), float(config.get("rms_norm_eps") or 1e-6)),
        (key(LLM.VOCAB_SIZE), int(config["vocab_size"])),
    ]
    if (theta := rope_theta(config)) is not None:
        meta.append((key(ROPE.FREQ_BASE), theta))
    meta += _rope_scaling_metadata(rope_scaling(config), key)
    if head_dim := config.get("head_dim"):
        meta += [(key(ATTN.KEY_LENGTH), int(head_dim)), (key(ATTN.VALUE_LENGTH), int(head_dim))]
    return meta


def _rope_scaling_metadata(params: dict, key) -> list[tuple[str, object]]:
    kind, factor = params.get("rope_type"), params.get("factor")
    if kind == "linear" and factor is not None:
        return [(key(ROPE.SCALING_TYPE), "linear"), (key(ROPE.SCALING_FACTOR), float(factor))]
    if kind != "yarn" or factor is None:
        return []  # "default"; "llama3" is carried by the rope_freqs tensor instead
    meta = [
        (key(ROPE.SCALING_TYPE), "yarn"),
        (key(ROPE.SCALING_FACTOR), float(factor)),
        (key(ROPE.SCALING_ORIG_CTX_LEN), int(params["original_max_position_embeddings"])),
    ]
    optional = {
        "extrapolation_factor": ROPE.SCALING_YARN_EXT_FACTOR,
        "attention_factor": ROPE.SCALING_YARN_ATTN_FACTOR,
        "beta_fast": ROPE.SCALING_YARN_BETA_FAST,
        "beta_slow": ROPE.SCALING_YARN_BETA_SLOW,
    }
    meta += [(key(k), float(params[f])) for f, k in optional.items() if params.get(f) is not None]
    return meta


def moe_metadata(config: dict, arch: str, n_experts: int) -> list[tuple[str, object]]:
    meta: list[tuple[str, object]] = [(LLM.EXPERT_COUNT.format(arch=arch), n_experts)]
    if used := config.get("num_experts_per_tok"):
        meta.append((LLM.EXPERT_USED_COUNT.format(arch=arch), int(used)))
    return meta


def llama_metadata(config: dict) -> list[tuple[str, object]]:
    arch = MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    meta = common_metadata(config, arch)
    meta.append((ROPE.DIMENSION_COUNT.format(arch=arch), int(head_dim)))
    if n := expert_count(config):
        meta += moe_metadata(config, arch, n)
    return meta


def qwen_moe_metadata(arch_id: MODEL_ARCH) -> Callable[[dict], list[tuple[str, object]]]:
    def metadata(config: dict) -> list[tuple[str, object]]:
        arch = MODEL_ARCH_NAMES[arch_id]
        meta = common_metadata(config, arch) + moe_metadata(config, arch, expert_count(config))
        meta.append(
            (LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=arch), config["moe_intermediate_size"])
        )
        if shared := config.get("shared_expert_intermediate_size"):
            meta.append((LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH.format(arch=arch), int(shared)))
        return meta

    return metadata


def olmoe_metadata(config: dict) -> list[tuple[str, object]]:
    arch = MODEL_ARCH_NAMES[MODEL_ARCH.OLMOE]
    # llama.cpp's converter writes a fixed 1e-5 here; the config's own epsilon is what the
    # model was trained with, so Itamae keeps it (common_metadata already did).
    return common_metadata(config, arch) + moe_metadata(config, arch, expert_count(config))


# DeepSeek routing when config.json is silent (transformers does not save `scoring_func`):
# V2 scores experts with softmax, V3/R1 with sigmoid. llama.cpp falls back to softmax, which
# is wrong for V3, so the key is always written.
DEEPSEEK_DEFAULT_GATING = {"deepseek_v2": "softmax", "deepseek_v3": "sigmoid"}
DEEPSEEK_DEFAULT_TOPK = {"deepseek_v2": "greedy", "deepseek_v3": "noaux_tc"}
GATING_FUNCS = {"softmax": ExpertGatingFuncType.SOFTMAX, "sigmoid": ExpertGatingFuncType.SIGMOID}


def expert_groups(config: dict) -> tuple[int, int] | None:
    """(n_group, topk_group) for llama.cpp's group-limited routing, or None for plain top-k.

    llama.cpp ranks groups by the sum of their two best scores, DeepSeek-V3's `noaux_tc`
    rule. DeepSeek-V2's `group_limited_greedy` ranks them by their best score instead; then
    the global top-k experts always lie in the top-k groups, so when experts_per_token <=
    topk_group the limit changes nothing and plain top-k is exact (llama.cpp's sum rule
    would not be). With more experts than groups per token llama.cpp can only approximate
    V2, and its group rule is kept. `greedy` (V2-Lite) has no group limit at all."""
    n_group, topk_group = int(config.get("n_group") or 1), int(config.get("topk_group") or 1)
    method = config.get("topk_method") or DEEPSEEK_DEFAULT_TOPK[config["model_type"]]
    if n_group <= 1 or method == "greedy":
        return None
    if (
        method == "group_limited_greedy"
        and int(config.get("num_experts_per_tok") or 1) <= topk_group
    ):
        return None
    return n_group, topk_group


def deepseek_metadata(config: dict) -> list[tuple[str, object]]:
    arch = MODEL_ARCH_NAMES[MODEL_ARCH.DEEPSEEK2]

    def key(template: str) -> str:
        return template.format(arch=arch)

    kv_lora = int(config.get("kv_lora_rank") or 512)
    rope_dim, nope_dim = int(config["qk_rope_head_dim"]), int(config["qk_nope_head_dim"])
    # MLA is stored as MQA with one wide KV head, decompressed per head (llama.cpp's layout).
    meta = [
        (k, v)
        for k, v in common_metadata({**config, "num_key_value_heads": 1}, arch)
        if k not in (key(ATTN.KEY_LENGTH), key(ATTN.VALUE_LENGTH))
    ]
    meta += moe_metadata(config, arch, expert_count(config))
    scoring = config.get("scoring_func") or DEEPSEEK_DEFAULT_GATING[config["model_type"]]
    if scoring not in GATING_FUNCS:
        raise UnsupportedArchitecture(
            f"DeepSeek scoring_func {scoring!r} is not one llama.cpp implements.",
            f"Supported: {', '.join(GATING_FUNCS)}.",
        )
    meta += [
        (key(LLM.EXPERT_GATING_FUNC), int(GATING_FUNCS[scoring])),
        (key(LLM.LEADING_DENSE_BLOCK_COUNT), int(config.get("first_k_dense_replace") or 0)),
        (key(ATTN.KV_LORA_RANK), kv_lora),
        (key(ATTN.KEY_LENGTH), kv_lora + rope_dim),
        (key(ATTN.VALUE_LENGTH), kv_lora),
        (key(ATTN.KEY_LENGTH_MLA), nope_dim + rope_dim),
        (key(ATTN.VALUE_LENGTH_MLA), int(config["v_head_dim"])),
        (key(LLM.EXPERT_FEED_FORWARD_LENGTH), int(config["moe_intermediate_size"])),
        (key(LLM.EXPERT_SHARED_COUNT), int(config.get("n_shared_experts") or 0)),
        (key(ROPE.DIMENSION_COUNT), rope_dim),
    ]
    if groups := expert_groups(config):
        meta += [
            (key(LLM.EXPERT_GROUP_COUNT), groups[0]),
            (key(LLM.EXPERT_GROUP_USED_COUNT), groups[1]),
        ]
    # 0 says "no q LoRA" (V2-Lite's plain q_proj). llama.cpp's converter leaves the key out,
    # and llama.cpp then guesses Lite from the layer count (26/27) and refuses other sizes.
    meta.append((key(ATTN.Q_LORA_RANK), int(config.get("q_lora_rank") or 0)))
    if config.get("routed_scaling_factor") is not None:
        meta.append((key(LLM.EXPERT_WEIGHTS_SCALE), float(config["routed_scaling_factor"])))
    if config.get("norm_topk_prob"):
        meta.append((key(LLM.EXPERT_WEIGHTS_NORM), True))
    if (mscale_all := rope_scaling(config).get("mscale_all_dim")) is not None:
        # llama.cpp's DeepSeek2 convention: 0.1 * mscale_all_dim (see its TAG_DEEPSEEK2_YARN_LOG_MUL_FIX)
        meta.append((key(ROPE.SCALING_YARN_LOG_MUL), 0.1 * float(mscale_all)))
    return meta
