"""Gemma 4 MoE (google/gemma-4-26B-A4B): sliding-window and global attention layers
(`layer_types`, 5:1 as published) with their own head sizes, KV-head counts and RoPE (global
layers: `global_head_dim`, `num_global_key_value_heads`, K = V (`attention_k_eq_v`: no
v_proj), proportional RoPE on a quarter of the head); q/k RMSNorms and a scale-free v norm,
attention scale 1; every layer runs a dense GELU MLP and a routed MoE side by side on the
same residual (each with its own pre/post norms, summed, then one more norm), the router
RMS-normalising its input and scaling it by a learned vector and 1/sqrt(hidden), softmax
over all experts, top-k renormalised, then a per-expert scale; a learned scalar per layer;
the embedding scaled by sqrt(hidden); final logits soft-capped (tanh, 30). The experts are
named `experts.gate_up_proj` / `experts.down_proj` right under the layer (no `mlp.`), and
the experts per token `top_k_experts`. Published as a vision-language model: the text
config under `text_config`, the language model under `model.language_model.`.

Gemma 4's RMSNorms scale by w (not 1 + w as Gemma 3's), so no norm is shifted. The dense
MLP beside the routed experts works for every token; inspect counts it as the one shared
expert (llama.cpp's src/models/gemma4.cpp calls it that too).

References: transformers' models/gemma4 (configuration_gemma4.py, modeling_gemma4.py);
llama.cpp's conversion/gemma.py (`Gemma4Model`) and src/models/gemma4.cpp.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import ATTN, LLM, ROPE
from converters.archs.spec import FULL_ATTENTION, ArchSpec
from converters.archs.tensors import ATTENTION, DENSE_FFN, QK_NORM

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.GEMMA4]
SLIDING_ATTENTION = "sliding_attention"

GEMMA4_LAYER = {
    **{k: v for k, v in ATTENTION.items() if k != "post_attention_layernorm.weight"},
    **QK_NORM,
    **DENSE_FFN,
    "post_attention_layernorm.weight": (T.ATTN_POST_NORM, ".weight"),
    "pre_feedforward_layernorm.weight": (T.FFN_NORM, ".weight"),
    "post_feedforward_layernorm.weight": (T.FFN_POST_NORM, ".weight"),
    "post_feedforward_layernorm_1.weight": (T.FFN_POST_NORM_1, ".weight"),
    "pre_feedforward_layernorm_2.weight": (T.FFN_PRE_NORM_2, ".weight"),
    "post_feedforward_layernorm_2.weight": (T.FFN_POST_NORM_2, ".weight"),
    "router.proj.weight": (T.FFN_GATE_INP, ".weight"),
    "router.scale": (T.FFN_GATE_INP, ".scale"),
    # the per-expert scale multiplies each expert's output: llama.cpp's down_exps scale
    "router.per_expert_scale": (T.FFN_DOWN_EXP, ".scale"),
    "layer_scalar": (T.LAYER_OUT_SCALE, ".weight"),
}


# tool-call and reasoning markers llama.cpp's converter keeps visible (USER_DEFINED) so that
# its chat parser reads them (conversion/gemma.py Gemma4Model.set_vocab)
VISIBLE_TOKENS = frozenset(
    {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
     "<tool_response|>", '<|"|>'}
)  # fmt: skip


def text_layer_types(config: dict) -> list[str]:
    """transformers' default when a config gives none: every 6th layer global; the last
    layer is always global (Gemma4TextConfig.__post_init__)."""
    n = int(config.get("num_hidden_layers") or 0)
    types = list(config.get("layer_types") or [])
    if len(types) != n:
        types = [SLIDING_ATTENTION if (i + 1) % 6 else FULL_ATTENTION for i in range(n)]
    if types:
        types[-1] = FULL_ATTENTION
    return types


def global_head_dim(config: dict) -> int:
    return int(config.get("global_head_dim") or 512)


def metadata(config: dict) -> list[tuple[str, object]]:
    """The keys llama.cpp's Gemma4Model.set_gguf_parameters writes, in its order."""

    def key(template: str) -> str:
        return template.format(arch=ARCH)

    types = text_layer_types(config)
    swa = [t == SLIDING_ATTENTION for t in types]
    rope = config.get("rope_parameters") or {}
    full_rope, swa_rope = rope.get(FULL_ATTENTION) or {}, rope.get(SLIDING_ATTENTION) or {}
    head_swa, head_full = int(config.get("head_dim") or 256), global_head_dim(config)
    kv_swa = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    kv_full = int(config.get("num_global_key_value_heads") or kv_swa)
    meta: list[tuple[str, object]] = [
        (key(LLM.BLOCK_COUNT), int(config["num_hidden_layers"])),
        (key(LLM.CONTEXT_LENGTH), int(config.get("max_position_embeddings") or 131072)),
        (key(LLM.EMBEDDING_LENGTH), int(config["hidden_size"])),
        (key(LLM.FEED_FORWARD_LENGTH), int(config["intermediate_size"])),
        (key(ATTN.HEAD_COUNT), int(config["num_attention_heads"])),
        (key(ATTN.HEAD_COUNT_KV), [kv_swa if s else kv_full for s in swa]),
        (key(ROPE.FREQ_BASE), float(full_rope.get("rope_theta", 1_000_000.0))),
        (key(ROPE.FREQ_BASE_SWA), float(swa_rope.get("rope_theta", 10_000.0))),
        (key(ATTN.LAYERNORM_RMS_EPS), float(config.get("rms_norm_eps") or 1e-6)),
    ]
    if n_experts := int(config.get("num_experts") or 0):
        meta += [
            (key(LLM.EXPERT_COUNT), n_experts),
            (key(LLM.EXPERT_USED_COUNT), int(config["top_k_experts"])),
        ]
    meta += [(key(ATTN.KEY_LENGTH), head_full), (key(ATTN.VALUE_LENGTH), head_full)]
    if softcap := config.get("final_logit_softcapping"):
        meta.append((key(LLM.FINAL_LOGIT_SOFTCAPPING), float(softcap)))
    meta += [
        (key(ATTN.SLIDING_WINDOW), int(config["sliding_window"])),
        (key(ATTN.SHARED_KV_LAYERS), int(config.get("num_kv_shared_layers") or 0)),
        (
            key(LLM.EMBD_LENGTH_PER_LAYER_INP),
            int(config.get("hidden_size_per_layer_input") or 0),
        ),
        (key(ATTN.SLIDING_WINDOW_PATTERN), swa),
        (key(ATTN.KEY_LENGTH_SWA), head_swa),
        (key(ATTN.VALUE_LENGTH_SWA), head_swa),
    ]
    if moe_ff := config.get("moe_intermediate_size"):
        meta.append((key(LLM.EXPERT_FEED_FORWARD_LENGTH), int(moe_ff)))
    swa_factor = float(swa_rope.get("partial_rotary_factor", 1.0))
    meta += [
        (key(ROPE.DIMENSION_COUNT), head_full),  # proportional: rope_freqs masks the rest
        (key(ROPE.DIMENSION_COUNT_SWA), int(head_swa * swa_factor)),
    ]
    return meta


SPEC = ArchSpec(
    model_type="gemma4",
    gguf_arch=MODEL_ARCH.GEMMA4,
    layer_tensors=GEMMA4_LAYER,
    expert_prefix="experts",
    expert_projections={},  # fused only: experts.gate_up_proj / experts.down_proj
    metadata=metadata,
    aliases=("gemma4_text",),
    chat_format="gemma4",
    experts_per_token_fields=("top_k_experts",),
    layer_types=text_layer_types,
    dense_mlp_beside_experts=True,
    gguf_fused_gate_up=True,
    tokenizer_model="gemma4",
    visible_tokens=VISIBLE_TOKENS,
    required_layer_kinds=lambda config, bid: (T.ATTN_NORM, T.ATTN_POST_NORM, T.ATTN_OUT),
)
