"""DeepSeek-V2, V2-Lite, Coder-V2: MLA attention (stored as MQA with one wide KV head,
kv_b_proj split into attn_k_b/attn_v_b), softmax routing with group-limited greedy top-k,
shared experts, `first_k_dense_replace` dense leading layers.

References: llama.cpp's conversion/deepseek.py (`DeepseekV2Model`) and src/models/deepseek2.cpp
(what its loader needs); transformers' modeling_deepseek_v2.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, ExpertGatingFuncType
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import (
    ATTN,
    LLM,
    ROPE,
    common_metadata,
    expert_count,
    moe_metadata,
)
from converters.archs.rope import rope_parameters
from converters.archs.spec import ArchSpec
from converters.archs.tensors import DENSE_FFN, MLA, QWEN_EXPERTS, SPLIT_KV_B
from converters.core.errors import UnsupportedArchitecture

DEEPSEEK_LAYER = {
    **MLA,
    **DENSE_FFN,  # the first_k_dense_replace leading layers
    "mlp.gate.weight": (T.FFN_GATE_INP, ".weight"),
    "mlp.gate.e_score_correction_bias": (T.FFN_EXP_PROBS_B, ".bias"),  # V3/R1 only
    "mlp.shared_experts.gate_proj.weight": (T.FFN_GATE_SHEXP, ".weight"),
    "mlp.shared_experts.up_proj.weight": (T.FFN_UP_SHEXP, ".weight"),
    "mlp.shared_experts.down_proj.weight": (T.FFN_DOWN_SHEXP, ".weight"),
    "self_attn.kv_b_proj.weight": (T.ATTN_K_B, ".weight"),  # split, see SPLIT_KV_B
}

GATING_FUNCS = {"softmax": ExpertGatingFuncType.SOFTMAX, "sigmoid": ExpertGatingFuncType.SIGMOID}


def expert_groups(config: dict, default_topk: str) -> tuple[int, int] | None:
    """(n_group, topk_group) for llama.cpp's group-limited routing, or None for plain top-k.

    llama.cpp ranks groups by the sum of their two best scores, DeepSeek-V3's `noaux_tc`
    rule. DeepSeek-V2's `group_limited_greedy` ranks them by their best score instead; then
    the global top-k experts always lie in the top-k groups, so when experts_per_token <=
    topk_group the limit changes nothing and plain top-k is exact (llama.cpp's sum rule
    would not be). With more experts than groups per token llama.cpp can only approximate
    V2, and its group rule is kept. `greedy` (V2-Lite) has no group limit at all."""
    n_group, topk_group = int(config.get("n_group") or 1), int(config.get("topk_group") or 1)
    method = config.get("topk_method") or default_topk
    if n_group <= 1 or method == "greedy":
        return None
    if (
        method == "group_limited_greedy"
        and int(config.get("num_experts_per_tok") or 1) <= topk_group
    ):
        return None
    return n_group, topk_group


def deepseek_metadata(default_scoring: str, default_topk: str, arch: str = ""):
    """The metadata builder of a DeepSeek generation whose config may omit its routing
    (transformers does not save `scoring_func`; llama.cpp then falls back to softmax, which
    is wrong for V3, so the gating key is always written). `arch`: the GGUF arch whose keys
    these are ("deepseek2" unless given)."""
    arch = arch or MODEL_ARCH_NAMES[MODEL_ARCH.DEEPSEEK2]
    return lambda config: _deepseek_metadata(config, default_scoring, default_topk, arch)


def _deepseek_metadata(
    config: dict, default_scoring: str, default_topk: str, arch: str
) -> list[tuple[str, object]]:

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
    scoring = config.get("scoring_func") or default_scoring
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
    if groups := expert_groups(config, default_topk):
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
    if (mscale_all := rope_parameters(config).get("mscale_all_dim")) is not None:
        # llama.cpp's DeepSeek2 convention: 0.1 * mscale_all_dim (see its TAG_DEEPSEEK2_YARN_LOG_MUL_FIX)
        meta.append((key(ROPE.SCALING_YARN_LOG_MUL), 0.1 * float(mscale_all)))
    return meta


def routes_with_sigmoid(metadata: dict) -> bool:
    """V3 and R1 score experts with sigmoid; V2 with softmax (gguf.ExpertGatingFuncType)."""
    return metadata.get("deepseek2.expert_gating_func") == int(ExpertGatingFuncType.SIGMOID)


SPEC = ArchSpec(
    model_type="deepseek_v2",
    gguf_arch=MODEL_ARCH.DEEPSEEK2,
    layer_tensors=DEEPSEEK_LAYER,
    expert_prefix="mlp.experts",
    expert_projections=QWEN_EXPERTS,
    metadata=deepseek_metadata(default_scoring="softmax", default_topk="greedy"),
    transforms={"self_attn.kv_b_proj.weight": SPLIT_KV_B},
    recognise_gguf=lambda metadata: not routes_with_sigmoid(metadata),
    chat_format="deepseek",
)
