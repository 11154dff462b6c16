"""Per-architecture tables: Hugging Face tensor names and config fields -> GGUF, as llama.cpp reads them.

References: llama.cpp's own converter as vendored in llama-cpp-python 0.3.36
(`convert_hf_to_gguf.py` and `conversion/{llama,qwen,olmo,deepseek,base}.py`) and the
gguf package's constants (`MODEL_ARCH`, `MODEL_TENSOR`, `TENSOR_NAMES`, `Keys`), which
are used here instead of retyped strings. Adding an architecture means one `ArchSpec`.

Names are matched after the layer number and the expert number are abstracted:
`model.layers.3.mlp.experts.7.up_proj.weight` is looked up as
`layers.{bid}.mlp.experts.{xid}.up_proj.weight`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import (
    deepseek_metadata,
    expert_count,
    llama_metadata,
    olmoe_metadata,
    qwen_moe_metadata,
)
from converters.core.errors import UnsupportedArchitecture

# How a source tensor is changed on its way into the GGUF file.
PERMUTE_Q = "permute_q"  # llama.cpp's Llama rope expects q/k rows interleaved per head
PERMUTE_K = "permute_k"
SPLIT_KV_B = "split_kv_b"  # DeepSeek MLA: kv_b_proj -> attn_k_b (transposed) + attn_v_b


def _linear(prefix: str, kind: T, bias: bool = True) -> dict[str, tuple[T, str]]:
    names = {f"{prefix}.weight": (kind, ".weight")}
    if bias:
        names[f"{prefix}.bias"] = (kind, ".bias")
    return names


# Spellings shared by every Llama-like checkpoint (Llama, Mixtral, Qwen, OLMoE, DeepSeek).
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": (T.TOKEN_EMBD, ".weight"),
    "model.norm.weight": (T.OUTPUT_NORM, ".weight"),
    "lm_head.weight": (T.OUTPUT, ".weight"),
}
ATTENTION = {
    **_linear("self_attn.q_proj", T.ATTN_Q),
    **_linear("self_attn.k_proj", T.ATTN_K),
    **_linear("self_attn.v_proj", T.ATTN_V),
    **_linear("self_attn.o_proj", T.ATTN_OUT),
    "input_layernorm.weight": (T.ATTN_NORM, ".weight"),
    "post_attention_layernorm.weight": (T.FFN_NORM, ".weight"),
}
QK_NORM = {
    "self_attn.q_norm.weight": (T.ATTN_Q_NORM, ".weight"),  # Qwen3-MoE (per head), OLMoE (whole)
    "self_attn.k_norm.weight": (T.ATTN_K_NORM, ".weight"),
}
DENSE_FFN = {
    "mlp.gate_proj.weight": (T.FFN_GATE, ".weight"),
    "mlp.up_proj.weight": (T.FFN_UP, ".weight"),
    "mlp.down_proj.weight": (T.FFN_DOWN, ".weight"),
}
MLA = {
    "self_attn.q_proj.weight": (T.ATTN_Q, ".weight"),  # DeepSeek-V2-Lite: no q LoRA
    "self_attn.q_a_proj.weight": (T.ATTN_Q_A, ".weight"),
    "self_attn.q_a_layernorm.weight": (T.ATTN_Q_A_NORM, ".weight"),
    "self_attn.q_b_proj.weight": (T.ATTN_Q_B, ".weight"),
    "self_attn.kv_a_proj_with_mqa.weight": (T.ATTN_KV_A_MQA, ".weight"),
    "self_attn.kv_a_layernorm.weight": (T.ATTN_KV_A_NORM, ".weight"),
    "self_attn.o_proj.weight": (T.ATTN_OUT, ".weight"),
    "input_layernorm.weight": (T.ATTN_NORM, ".weight"),
    "post_attention_layernorm.weight": (T.FFN_NORM, ".weight"),
}
QWEN_EXPERTS = {  # Qwen-MoE, OLMoE, DeepSeek: mlp.experts.{xid}.*
    "gate_proj": T.FFN_GATE_EXP,
    "up_proj": T.FFN_UP_EXP,
    "down_proj": T.FFN_DOWN_EXP,
}
MIXTRAL_EXPERTS = {  # Mixtral: block_sparse_moe.experts.{xid}.w1/w3/w2
    "w1": T.FFN_GATE_EXP,
    "w3": T.FFN_UP_EXP,
    "w2": T.FFN_DOWN_EXP,
}


@dataclass(frozen=True)
class ArchSpec:
    model_type: str  # HF config.json `model_type`
    gguf_arch: MODEL_ARCH
    layer_tensors: dict[str, tuple[T, str]]  # name after `model.layers.{bid}.` -> (kind, suffix)
    expert_prefix: str  # e.g. "mlp.experts" (per-expert names follow it: `.{xid}.<proj>.weight`)
    expert_projections: dict[str, T]
    metadata: Callable[[dict], list[tuple[str, object]]]
    transforms: dict[str, str] = field(default_factory=dict)  # layer name -> transform

    @property
    def arch_name(self) -> str:
        return MODEL_ARCH_NAMES[self.gguf_arch]

    def n_experts(self, config: dict) -> int:
        return expert_count(config)

    def is_moe_layer(self, config: dict, bid: int) -> bool:
        if not self.n_experts(config):
            return False
        if bid < int(config.get("first_k_dense_replace") or 0):
            return False
        if bid in (config.get("mlp_only_layers") or []):
            return False
        step = int(config.get("decoder_sparse_step") or config.get("moe_layer_freq") or 1)
        return (bid + 1) % step == 0 if "decoder_sparse_step" in config else bid % step == 0


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
QWEN_MOE_LAYER = {**ATTENTION, "mlp.gate.weight": (T.FFN_GATE_INP, ".weight")}

ARCHS: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec(
            "llama",
            MODEL_ARCH.LLAMA,
            {**ATTENTION, **DENSE_FFN},
            "",
            {},
            llama_metadata,
            {"self_attn.q_proj.weight": PERMUTE_Q, "self_attn.k_proj.weight": PERMUTE_K},
        ),
        # llama.cpp runs Mixtral as the llama architecture with stacked experts.
        ArchSpec(
            "mixtral",
            MODEL_ARCH.LLAMA,
            {**ATTENTION, "block_sparse_moe.gate.weight": (T.FFN_GATE_INP, ".weight")},
            "block_sparse_moe.experts",
            MIXTRAL_EXPERTS,
            llama_metadata,
            {"self_attn.q_proj.weight": PERMUTE_Q, "self_attn.k_proj.weight": PERMUTE_K},
        ),
        ArchSpec(
            "qwen2_moe",
            MODEL_ARCH.QWEN2MOE,
            {
                **QWEN_MOE_LAYER,
                "mlp.shared_expert.gate_proj.weight": (T.FFN_GATE_SHEXP, ".weight"),
                "mlp.shared_expert.up_proj.weight": (T.FFN_UP_SHEXP, ".weight"),
                "mlp.shared_expert.down_proj.weight": (T.FFN_DOWN_SHEXP, ".weight"),
                "mlp.shared_expert_gate.weight": (T.FFN_GATE_INP_SHEXP, ".weight"),
            },
            "mlp.experts",
            QWEN_EXPERTS,
            qwen_moe_metadata(MODEL_ARCH.QWEN2MOE),
        ),
        ArchSpec(
            "qwen3_moe",
            MODEL_ARCH.QWEN3MOE,
            {**QWEN_MOE_LAYER, **QK_NORM},
            "mlp.experts",
            QWEN_EXPERTS,
            qwen_moe_metadata(MODEL_ARCH.QWEN3MOE),
        ),
        ArchSpec(
            "olmoe",
            MODEL_ARCH.OLMOE,
            {**QWEN_MOE_LAYER, **QK_NORM},
            "mlp.experts",
            QWEN_EXPERTS,
            olmoe_metadata,
        ),
        ArchSpec(
            "deepseek_v2",
            MODEL_ARCH.DEEPSEEK2,
            DEEPSEEK_LAYER,
            "mlp.experts",
            QWEN_EXPERTS,
            deepseek_metadata,
            {"self_attn.kv_b_proj.weight": SPLIT_KV_B},
        ),
        ArchSpec(
            "deepseek_v3",
            MODEL_ARCH.DEEPSEEK2,
            DEEPSEEK_LAYER,
            "mlp.experts",
            QWEN_EXPERTS,
            deepseek_metadata,
            {"self_attn.kv_b_proj.weight": SPLIT_KV_B},
        ),
    )
}


def arch_spec(config: dict) -> ArchSpec:
    model_type = str(config.get("model_type", ""))
    if model_type not in ARCHS:
        raise UnsupportedArchitecture(
            f"Architecture {model_type or '(config.json names none)'!r} is not supported.",
            f"Supported architectures: {', '.join(sorted(ARCHS))}.",
        )
    return ARCHS[model_type]


LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def split_layer_name(name: str) -> tuple[int | None, str]:
    """`model.layers.3.self_attn.q_proj.weight` -> (3, "self_attn.q_proj.weight")."""
    if match := LAYER_NAME.match(name):
        return int(match.group(1)), match.group(2)
    return None, name
