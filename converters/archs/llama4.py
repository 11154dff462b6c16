"""Llama 4 (meta-llama/Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E): MoE layers every
`interleave_moe_layer_step`-th layer (Scout 1, Maverick 2; `moe_layers` lists them) with
dense SwiGLU layers between (`intermediate_size_mlp` wide), each MoE layer a sigmoid top-k
router (top-1 as published) whose score multiplies the expert's INPUT, plus one shared
expert as wide as the routed ones (`intermediate_size`). Attention: RoPE layers (Llama 3
scaled, pairs of adjacent dims rotated) attend within chunks of `attention_chunk_size`
tokens and L2-normalise q and k (`use_qk_norm`); every 4th layer (`no_rope_layers` 0) is
a global NoPE layer whose queries get the attention temperature tuning (`floor_scale`,
`attn_scale`). Published as a vision-language model: the text config under `text_config`,
the language model under `language_model.` (HFCheckpoint reads it without the prefix; the
vision tower and projector are left out, as llama.cpp's text converter does). The fused
experts are stored inputs first: `feed_forward.experts.gate_up_proj` [E, H, 2F] (gate
columns, then up) and `feed_forward.experts.down_proj` [E, F, H].

llama.cpp runs it as `llama4` (src/models/llama4.cpp): its loader hard-codes the chunk
(8192), the NoPE step (4), the temperature tuning's floor (8192) and scale (0.1), and uses
the q/k norm unless the model has 128 experts; none of them is a GGUF key its converter
writes, so a checkpoint that differs runs in llama.cpp with those values. Itamae's torch
engine follows config.json.

References: transformers' models/llama4 (configuration_llama4.py, modeling_llama4.py);
llama.cpp's conversion/llama.py (`Llama4Model`: intermediate_size_mlp as the FFN length,
gate_up split after a transpose, no q/k permutation) and src/models/llama4.cpp.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import ATTN, LLM, ROPE, common_metadata, moe_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import ATTENTION

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA4]

LLAMA4_LAYER = {
    **ATTENTION,
    "feed_forward.router.weight": (T.FFN_GATE_INP, ".weight"),
    "feed_forward.shared_expert.gate_proj.weight": (T.FFN_GATE_SHEXP, ".weight"),
    "feed_forward.shared_expert.up_proj.weight": (T.FFN_UP_SHEXP, ".weight"),
    "feed_forward.shared_expert.down_proj.weight": (T.FFN_DOWN_SHEXP, ".weight"),
    # the dense layers between the MoE ones
    "feed_forward.gate_proj.weight": (T.FFN_GATE, ".weight"),
    "feed_forward.up_proj.weight": (T.FFN_UP, ".weight"),
    "feed_forward.down_proj.weight": (T.FFN_DOWN, ".weight"),
}


def metadata(config: dict) -> list[tuple[str, object]]:
    """Llama4Model.set_gguf_parameters: the dense layers' width is the FFN length, the
    routed (and shared) experts' the expert FFN length."""

    def key(template: str) -> str:
        return template.format(arch=ARCH)

    dense = {**config, "intermediate_size": config.get("intermediate_size_mlp", 16384)}
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    meta = common_metadata(dense, ARCH)
    meta.append((key(ROPE.DIMENSION_COUNT), int(head_dim)))
    meta += moe_metadata(config, ARCH, int(config.get("num_local_experts") or 0))
    meta += [
        (key(LLM.INTERLEAVE_MOE_LAYER_STEP), int(config.get("interleave_moe_layer_step") or 1)),
        (key(LLM.EXPERT_FEED_FORWARD_LENGTH), int(config["intermediate_size"])),
    ]
    types = config.get("layer_types")
    if types and all(t == "full_attention" for t in types):  # MobileLLM: no chunked layers
        meta.append((key(ATTN.SLIDING_WINDOW), 0))
    return meta


SPEC = ArchSpec(
    model_type="llama4",
    gguf_arch=MODEL_ARCH.LLAMA4,
    layer_tensors=LLAMA4_LAYER,
    expert_prefix="feed_forward.experts",
    expert_projections={},  # fused only: experts.gate_up_proj / experts.down_proj
    metadata=metadata,
    aliases=("llama4_text",),
    chat_format="llama4",
    llamacpp_default_window=8192,  # llama.cpp's hparams.n_swa for llama4 (chunked)
    fused_experts_in_out=True,
    shared_experts_per_moe_layer=1,
)
