"""Tensor-name tables the families share: Hugging Face spellings -> GGUF tensor kinds.

References: llama.cpp's own converter as vendored in llama-cpp-python 0.3.36
(`convert_hf_to_gguf.py` and `conversion/{llama,qwen,olmo,deepseek,base}.py`) and the
gguf package's constants (`MODEL_ARCH`, `MODEL_TENSOR`, `TENSOR_NAMES`, `Keys`), which
are used here instead of retyped strings. Each family module picks the tables it uses.

Names are matched after the layer number and the expert number are abstracted:
`model.layers.3.mlp.experts.7.up_proj.weight` is looked up as
`layers.{bid}.mlp.experts.{xid}.up_proj.weight`.
"""

from __future__ import annotations

import re

from gguf import MODEL_TENSOR as T

# How a source tensor is changed on its way into the GGUF file.
PERMUTE_Q = "permute_q"  # llama.cpp's Llama rope expects q/k rows interleaved per head
PERMUTE_K = "permute_k"
SPLIT_KV_B = "split_kv_b"  # DeepSeek MLA: kv_b_proj -> attn_k_b (transposed) + attn_v_b
# Gated DeltaNet (Qwen3-Next; llama.cpp's conversion/qwen.py Qwen3NextModel.modify_tensors)
ADD_ONE = "add_one"  # zero-centred RMSNorm weight w (scale 1 + w) -> llama.cpp's plain scale
NEG_EXP = "neg_exp"  # A_log -> A = -exp(A_log), the decay rate llama.cpp reads
SQUEEZE = "squeeze"  # depthwise conv1d weight [C, 1, K] -> [C, K]
V_REORDER = "tile_v:"  # + "v_rows" | "rows" | "heads" | "columns": Qwen3.5's value-head order
SPLIT_QKVZ = "split_qkvz"  # per-key-head [q, k, v, z] rows -> attn_qkv [q|k|v] + attn_gate [z]
# Mamba-2 (Nemotron-H; llama.cpp's conversion/mamba.py Mamba2Model.modify_tensors)
COLUMN = "column"  # a per-head vector [H] -> [H, 1] (A, D)
GROUP_ROWS = "group_rows"  # the gated norm's weight [inner] -> [n_groups, inner / n_groups]


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
NEXTN = {  # GLM-4.5's multi-token-prediction layer, beside a full decoder layer's tensors
    "eh_proj.weight": (T.NEXTN_EH_PROJ, ".weight"),
    "embed_tokens.weight": (T.NEXTN_EMBED_TOKENS, ".weight"),
    "enorm.weight": (T.NEXTN_ENORM, ".weight"),
    "hnorm.weight": (T.NEXTN_HNORM, ".weight"),
    "shared_head.head.weight": (T.NEXTN_SHARED_HEAD_HEAD, ".weight"),
    "shared_head.norm.weight": (T.NEXTN_SHARED_HEAD_NORM, ".weight"),
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

# The shared expert with a sigmoid gate of Qwen2-MoE and Qwen3-Next.
GATED_SHARED_EXPERT = {
    "mlp.shared_expert.gate_proj.weight": (T.FFN_GATE_SHEXP, ".weight"),
    "mlp.shared_expert.up_proj.weight": (T.FFN_UP_SHEXP, ".weight"),
    "mlp.shared_expert.down_proj.weight": (T.FFN_DOWN_SHEXP, ".weight"),
    "mlp.shared_expert_gate.weight": (T.FFN_GATE_INP_SHEXP, ".weight"),
}
# Gated DeltaNet linear attention (Qwen3-Next's `linear_attn`); in_proj_qkvz is split in two.
GATED_DELTANET = {
    "linear_attn.in_proj_qkvz.weight": (T.ATTN_QKV, ".weight"),
    "linear_attn.in_proj_ba.weight": (T.SSM_BETA_ALPHA, ".weight"),
    "linear_attn.conv1d.weight": (T.SSM_CONV1D, ".weight"),
    "linear_attn.dt_bias": (T.SSM_DT, ".bias"),
    "linear_attn.A_log": (T.SSM_A, ""),
    "linear_attn.norm.weight": (T.SSM_NORM, ".weight"),
    "linear_attn.out_proj.weight": (T.SSM_OUT, ".weight"),
}

# Qwen3.5's Gated DeltaNet: the same with separate projections (llama.cpp's tensor_mapping)
GATED_DELTANET_SPLIT = {
    **{k: v for k, v in GATED_DELTANET.items() if "in_proj" not in k},
    "linear_attn.in_proj_qkv.weight": (T.ATTN_QKV, ".weight"),
    "linear_attn.in_proj_z.weight": (T.ATTN_GATE, ".weight"),
    "linear_attn.in_proj_b.weight": (T.SSM_BETA, ".weight"),
    "linear_attn.in_proj_a.weight": (T.SSM_ALPHA, ".weight"),
}

QWEN_MOE_LAYER = {**ATTENTION, "mlp.gate.weight": (T.FFN_GATE_INP, ".weight")}

# transformers' `model.layers.N.`; DeepSeek-V4 publishes its own code's `layers.N.`
LAYER_NAME = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")


def split_layer_name(name: str) -> tuple[int | None, str]:
    """`model.layers.3.self_attn.q_proj.weight` -> (3, "self_attn.q_proj.weight");
    `layers.3.attn.wq_a.weight` -> (3, "attn.wq_a.weight")."""
    if match := LAYER_NAME.match(name):
        return int(match.group(1)), match.group(2)
    return None, name
