"""GGUF metadata the families share: HF config.json fields -> the `{arch}.*` keys llama.cpp reads.

References: llama.cpp's converter as vendored in llama-cpp-python 0.3.36
(conversion/base.py `TextModel.set_gguf_parameters`, conversion/{llama,qwen,olmo,deepseek}.py)
and its loader (src/models/deepseek2.cpp for what DeepSeek needs); key names are the gguf
package's `Keys` constants. Where a config is silent or llama.cpp's converter guesses,
the value is derived from what the architecture means (see DeepSeek below).
"""

from __future__ import annotations

from collections.abc import Callable

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, Keys

from converters.archs.rope import rope_parameters
from converters.archs.spec import EXPERT_COUNT_FIELDS

LLM, ATTN, ROPE = Keys.LLM, Keys.Attention, Keys.Rope


def expert_count(config: dict) -> int:
    """Routed experts per MoE layer, whichever field the config names them in (Qwen3-MoE
    says num_experts when published, num_local_experts when saved by transformers 5)."""
    return int(next((config[k] for k in EXPERT_COUNT_FIELDS if config.get(k)), 0))


def common_metadata(
    config: dict, arch: str, with_vocab_size: bool = True
) -> list[tuple[str, object]]:
    """What llama.cpp's TextModel.set_gguf_parameters writes for every text model
    (`with_vocab_size=False` for the families whose converter leaves {arch}.vocab_size out:
    the token list says it)."""

    def key(template: str) -> str:
        return template.format(arch=arch)

    meta: list[tuple[str, object]] = [
        (key(LLM.BLOCK_COUNT), int(config["num_hidden_layers"])),
        (key(LLM.CONTEXT_LENGTH), int(config.get("max_position_embeddings") or 4096)),
        (key(LLM.EMBEDDING_LENGTH), int(config["hidden_size"])),
        (key(ATTN.HEAD_COUNT), int(config["num_attention_heads"])),
        (
            key(ATTN.HEAD_COUNT_KV),
            int(config.get("num_key_value_heads") or config["num_attention_heads"]),
        ),
        (key(ATTN.LAYERNORM_RMS_EPS), float(config.get("rms_norm_eps") or 1e-6)),
    ]
    if "intermediate_size" in config:  # not in an all-MoE config (DeepSeek-V4)
        meta.insert(3, (key(LLM.FEED_FORWARD_LENGTH), int(config["intermediate_size"])))
    if with_vocab_size:
        meta.append((key(LLM.VOCAB_SIZE), int(config["vocab_size"])))
    if (theta := rope_parameters(config)["rope_theta"]) is not None:
        meta.append((key(ROPE.FREQ_BASE), theta))
    meta += _rope_scaling_metadata(rope_parameters(config), key)
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
