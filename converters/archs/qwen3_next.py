"""Qwen3-Next-80B-A3B: Gated DeltaNet linear-attention layers, with a gated full-attention
layer every `full_attention_interval` (or as `layer_types` lists), partial rotary,
zero-centred RMSNorm weights (scale 1 + w), Qwen2-MoE's routing with a sigmoid-gated shared
expert on every layer. The multi-token-prediction tensors (`mtp.*`) are skipped, as
llama.cpp does (its converter then needs --no-mtp; a checkpoint saved by transformers has
none).

References: llama.cpp's conversion/qwen.py (`Qwen3NextModel`, `_QwenMtpMixin`) and
src/models/qwen3next.cpp; transformers' configuration_qwen3_next.py (layer_types from the
interval) and modeling_qwen3_next.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, Keys
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import qwen_moe_metadata
from converters.archs.rope import rope_parameters
from converters.archs.spec import FULL_ATTENTION, LINEAR_ATTENTION, ArchSpec
from converters.archs.tensors import (
    ADD_ONE,
    GATED_DELTANET,
    GATED_SHARED_EXPERT,
    NEG_EXP,
    QK_NORM,
    QWEN_EXPERTS,
    QWEN_MOE_LAYER,
    SPLIT_QKVZ,
    SQUEEZE,
)

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN3NEXT]
# gguf 0.19.0 predates this key; llama.cpp's loader reads it (src/models/qwen3next.cpp)
RECURRENT_LAYERS = "{arch}.attention.recurrent_layers"


def layer_types(config: dict) -> list[str]:
    """transformers' rule: the config's layer_types, else full attention every interval-th."""
    n = int(config.get("num_hidden_layers") or 0)
    if isinstance(given := config.get("layer_types"), list) and len(given) == n:
        return [str(t) for t in given]
    interval = int(config.get("full_attention_interval") or 4)
    return [FULL_ATTENTION if (i + 1) % interval == 0 else LINEAR_ATTENTION for i in range(n)]


def required_layer_kinds(config: dict, bid: int) -> tuple[T, ...]:
    mixer = (T.ATTN_OUT,) if layer_types(config)[bid] == FULL_ATTENTION else (T.SSM_OUT,)
    return (T.ATTN_NORM, T.ATTN_POST_NORM, *mixer)


def metadata(config: dict) -> list[tuple[str, object]]:
    """Qwen2-MoE's keys plus the linear attention's (Qwen3NextModel.set_gguf_parameters)."""
    ssm = Keys.SSM
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    partial = rope_parameters(config).get("partial_rotary_factor") or config.get(
        "partial_rotary_factor", 0.25
    )
    values = int(config["linear_value_head_dim"]) * int(config["linear_num_value_heads"])
    meta = qwen_moe_metadata(MODEL_ARCH.QWEN3NEXT)(config) + [
        (ssm.CONV_KERNEL, int(config["linear_conv_kernel_dim"])),
        (ssm.STATE_SIZE, int(config["linear_key_head_dim"])),
        (ssm.GROUP_COUNT, int(config["linear_num_key_heads"])),
        (ssm.TIME_STEP_RANK, int(config["linear_num_value_heads"])),
        (ssm.INNER_SIZE, values),
        (RECURRENT_LAYERS, [t == LINEAR_ATTENTION for t in layer_types(config)]),
        (Keys.LLM.FULL_ATTENTION_INTERVAL, int(config.get("full_attention_interval") or 4)),
        (Keys.Rope.DIMENSION_COUNT, int(int(head_dim) * float(partial))),
    ]
    return [(key.format(arch=ARCH), value) for key, value in meta]


NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", *QK_NORM)

SPEC = ArchSpec(
    model_type="qwen3_next",
    gguf_arch=MODEL_ARCH.QWEN3NEXT,
    layer_tensors={
        **QWEN_MOE_LAYER,
        **QK_NORM,
        **GATED_SHARED_EXPERT,
        **GATED_DELTANET,
        "post_attention_layernorm.weight": (T.ATTN_POST_NORM, ".weight"),
    },
    expert_prefix="mlp.experts",
    expert_projections=QWEN_EXPERTS,
    metadata=metadata,
    transforms={
        **dict.fromkeys(NORMS, ADD_ONE),
        "model.norm.weight": ADD_ONE,
        "linear_attn.A_log": NEG_EXP,
        "linear_attn.conv1d.weight": SQUEEZE,
        "linear_attn.in_proj_qkvz.weight": SPLIT_QKVZ,
    },
    chat_format="chatml",
    layer_types=layer_types,
    required_layer_kinds=required_layer_kinds,
)
