"""Nemotron-H (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B): a hybrid whose every layer is ONE
mixer behind a pre-norm, chosen by `hybrid_override_pattern` (one character per layer,
"M" Mamba-2, "*" softmax attention, "E" MoE, "-" dense MLP; transformers 5 reads it into
`layers_block_type` as linear_attention / full_attention / moe / mlp). Attention and MoE
are never in the same layer, and the layers with no attention keep no KV cache: a Mamba-2
layer keeps a conv state and an SSM state per sequence instead. The MoE layers route with
DeepSeek-V3's sigmoid scores, correction bias, group-limited top-k, renormalisation and
`routed_scaling_factor`; their experts and one shared expert are two-matrix ReLU^2 FFNs
(up, down; no gate). Published with the model under `backbone.` (embeddings, norm_f) and
the experts one tensor per expert, as transformers 5 also saves it.

llama.cpp runs it as `nemotron_h_moe` (src/models/nemotron-h-moe.cpp); its converter
(conversion/nemotron.py NemotronHModel over GraniteHybridModel and Mamba2Model) writes the
per-layer FFN widths and KV head counts as arrays (0 where a layer has none), the Mamba-2
sizes as `ssm.*` keys, A as -exp(A_log) and D as [heads, 1] columns, the gated norm's
weight as [n_groups, inner / n_groups], the conv1d weight squeezed, the router's
correction bias as `exp_probs_b`, q and k rows permuted as for Llama's RoPE (harmless:
Nemotron-H's attention has none), and, for want of RoPE, a context length of 2^20.
Its vocabulary is padded to a multiple of 8, which llama.cpp's loader then expects of the
embedding rows: a published vocabulary (131072) already is one.

The torch engine runs the folder as published (engine/torch/models/nemotron_h.py); the
torch format does not lay out experts without a gate yet.

References: transformers' models/nemotron_h (configuration_nemotron_h.py: the pattern and
its mapping; modeling_nemotron_h.py: the mixers and the router).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, Keys
from gguf import MODEL_TENSOR as T

from converters.archs.spec import FULL_ATTENTION, LINEAR_ATTENTION, ArchSpec
from converters.archs.tensors import COLUMN, GROUP_ROWS, NEG_EXP, PERMUTE_K, PERMUTE_Q, SQUEEZE

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.NEMOTRON_H_MOE]
LLM, ATTN, SSM = Keys.LLM, Keys.Attention, Keys.SSM
NO_ROPE_CONTEXT = 2**20  # GraniteHybridModel: a hybrid without RoPE gets this context

# hybrid_override_pattern's characters, as transformers' NemotronHConfig maps them
PATTERN = {"M": LINEAR_ATTENTION, "*": FULL_ATTENTION, "E": "moe", "-": "mlp"}
# older names of the same kinds that layers_block_type may carry (remap_legacy_layer_types)
LEGACY = {"mamba": LINEAR_ATTENTION, "attention": FULL_ATTENTION}


def layer_types(config: dict) -> list[str]:
    """One kind per layer: the config's layers_block_type, else its hybrid_override_pattern."""
    given = config.get("layers_block_type") or config.get("layer_types")
    if isinstance(given, list):
        return [LEGACY.get(str(t), str(t)) for t in given]
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str):
        return [PATTERN.get(c, c) for c in pattern]
    return []


def is_moe_layer(config: dict, bid: int) -> bool:
    types = layer_types(config)
    return bid < len(types) and types[bid] == "moe"


def metadata(config: dict) -> list[tuple[str, object]]:
    """NemotronHModel.set_gguf_parameters (with GraniteHybridModel's and Mamba2Model's)."""
    types = layer_types(config)
    n_layers = len(types)
    head_dim = int(config.get("head_dim") or config.get("attention_head_dim"))
    expert_ffn = int(config["moe_intermediate_size"])
    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    eps = float(config.get("layer_norm_epsilon") or config.get("norm_eps") or 1e-5)
    meta = [
        (LLM.BLOCK_COUNT, n_layers),
        (LLM.CONTEXT_LENGTH, NO_ROPE_CONTEXT),
        (LLM.EMBEDDING_LENGTH, int(config["hidden_size"])),
        (LLM.FEED_FORWARD_LENGTH, [expert_ffn if t == "moe" else 0 for t in types]),
        (ATTN.HEAD_COUNT, int(config["num_attention_heads"])),
        (ATTN.HEAD_COUNT_KV, [kv_heads if t == FULL_ATTENTION else 0 for t in types]),
        (Keys.Rope.FREQ_BASE, float(config.get("rope_theta") or 10000.0)),
        (ATTN.LAYERNORM_RMS_EPS, eps),
        (ATTN.LAYERNORM_EPS, eps),
        (LLM.EXPERT_COUNT, int(config["n_routed_experts"])),
        (LLM.EXPERT_USED_COUNT, int(config["num_experts_per_tok"])),
        (LLM.EXPERT_GROUP_COUNT, int(config.get("n_group") or 1)),
        (LLM.EXPERT_GROUP_USED_COUNT, int(config.get("topk_group") or 1)),
        (LLM.VOCAB_SIZE, int(config["vocab_size"])),
        (Keys.Rope.DIMENSION_COUNT, head_dim),
        (SSM.CONV_KERNEL, int(config["conv_kernel"])),
        (SSM.STATE_SIZE, int(config["ssm_state_size"])),
        (SSM.GROUP_COUNT, int(config["n_groups"])),
        (SSM.INNER_SIZE, int(config["mamba_num_heads"]) * int(config["mamba_head_dim"])),
        (SSM.TIME_STEP_RANK, int(config["mamba_num_heads"])),
        (Keys.Rope.SCALING_FINETUNED, False),
        (ATTN.KEY_LENGTH, head_dim),
        (ATTN.VALUE_LENGTH, head_dim),
        (LLM.EXPERT_FEED_FORWARD_LENGTH, expert_ffn),
        (LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, int(config["moe_shared_expert_intermediate_size"])),
        (LLM.EXPERT_SHARED_COUNT, int(config.get("n_shared_experts") or 0)),
        (LLM.EXPERT_WEIGHTS_NORM, bool(config.get("norm_topk_prob"))),
        (LLM.EXPERT_WEIGHTS_SCALE, float(config.get("routed_scaling_factor") or 1.0)),
    ]
    return [(key.format(arch=ARCH), value) for key, value in meta]


def required_layer_kinds(config: dict, bid: int) -> tuple[T, ...]:
    """A layer is its norm and one mixer."""
    kind = layer_types(config)[bid]
    if kind == LINEAR_ATTENTION:
        return (T.ATTN_NORM, T.SSM_IN, T.SSM_CONV1D, T.SSM_A, T.SSM_D, T.SSM_NORM, T.SSM_OUT)
    if kind == FULL_ATTENTION:
        return (T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT)
    if kind == "moe":
        return (T.ATTN_NORM, T.FFN_GATE_INP, T.FFN_UP_EXP, T.FFN_DOWN_EXP)
    return (T.ATTN_NORM, T.FFN_UP, T.FFN_DOWN)  # "-": a dense ReLU^2 MLP


LAYER_TENSORS = {
    "norm.weight": (T.ATTN_NORM, ".weight"),
    # Mamba-2
    "mixer.in_proj.weight": (T.SSM_IN, ".weight"),
    "mixer.conv1d.weight": (T.SSM_CONV1D, ".weight"),
    "mixer.conv1d.bias": (T.SSM_CONV1D, ".bias"),
    "mixer.dt_bias": (T.SSM_DT, ".bias"),
    "mixer.A_log": (T.SSM_A, ""),
    "mixer.D": (T.SSM_D, ""),
    "mixer.norm.weight": (T.SSM_NORM, ".weight"),
    "mixer.out_proj.weight": (T.SSM_OUT, ".weight"),
    # softmax attention (no RoPE)
    "mixer.q_proj.weight": (T.ATTN_Q, ".weight"),
    "mixer.k_proj.weight": (T.ATTN_K, ".weight"),
    "mixer.v_proj.weight": (T.ATTN_V, ".weight"),
    "mixer.o_proj.weight": (T.ATTN_OUT, ".weight"),
    # MoE: the router, its correction bias, the shared expert; a dense MLP layer ("-")
    "mixer.gate.weight": (T.FFN_GATE_INP, ".weight"),
    "mixer.gate.e_score_correction_bias": (T.FFN_EXP_PROBS_B, ".bias"),
    "mixer.shared_experts.up_proj.weight": (T.FFN_UP_SHEXP, ".weight"),
    "mixer.shared_experts.down_proj.weight": (T.FFN_DOWN_SHEXP, ".weight"),
    "mixer.up_proj.weight": (T.FFN_UP, ".weight"),
    "mixer.down_proj.weight": (T.FFN_DOWN, ".weight"),
}


SPEC = ArchSpec(
    model_type="nemotron_h",
    gguf_arch=MODEL_ARCH.NEMOTRON_H_MOE,
    layer_tensors=LAYER_TENSORS,
    expert_prefix="mixer.experts",
    expert_projections={"up_proj": T.FFN_UP_EXP, "down_proj": T.FFN_DOWN_EXP},
    metadata=metadata,
    transforms={
        "mixer.A_log": f"{NEG_EXP}+{COLUMN}",
        "mixer.D": COLUMN,
        "mixer.conv1d.weight": SQUEEZE,
        "mixer.norm.weight": GROUP_ROWS,
        # LlamaModel's rope permutation, which its attention layers inherit; with no RoPE it
        # reorders q's and k's head dims alike, leaving the scores as they are
        "mixer.q_proj.weight": PERMUTE_Q,
        "mixer.k_proj.weight": PERMUTE_K,
    },
    root_tensors={
        "model.embeddings.weight": (T.TOKEN_EMBD, ".weight"),
        "model.norm_f.weight": (T.OUTPUT_NORM, ".weight"),
    },
    chat_format="chatml",
    layer_types=layer_types,
    moe_layer=is_moe_layer,
    required_layer_kinds=required_layer_kinds,
    ffn_in_every_layer=False,
    converts_to_torch_format=False,  # its experts have no gate projection
)
