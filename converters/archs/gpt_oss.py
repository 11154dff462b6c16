"""gpt-oss-20b / gpt-oss-120b (OpenAI): GQA attention with biases and a learned sink logit
per head, alternating sliding-window (even layers) and full attention (`layer_types`),
YaRN RoPE; every layer MoE with a biased router (softmax over the chosen top-k), experts
published in MXFP4 with a fused, interleaved gate_up projection (even rows gate, odd rows
up), expert biases and a clamped SwiGLU (`swiglu_limit`, alpha 1.702, (up + 1) * glu).

The MXFP4 expert blocks are carried into the GGUF as ggml's MXFP4 type, nibbles reordered
but never dequantized (converters/formats/mxfp4.py). References: llama.cpp's
conversion/gpt_oss.py and src/models/openai-moe.cpp; transformers' modeling_gpt_oss.py and
integrations/mxfp4.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import ATTN, LLM, common_metadata, expert_count, moe_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import ATTENTION, QWEN_EXPERTS

GPT_OSS_LAYER = {
    **{k: v for k, v in ATTENTION.items() if k != "post_attention_layernorm.weight"},
    # the norm before the MoE: llama.cpp's gpt-oss calls it attn_post_norm
    "post_attention_layernorm.weight": (T.ATTN_POST_NORM, ".weight"),
    "self_attn.sinks": (T.ATTN_SINKS, ".weight"),
    "mlp.router.weight": (T.FFN_GATE_INP, ".weight"),
    "mlp.router.bias": (T.FFN_GATE_INP, ".bias"),
}
# The clamped SwiGLU's fixed sigmoid gain (transformers' GptOssExperts.alpha, llama.cpp's
# LLM_FFN_SWIGLU_OAI_MOE); configs may name it swiglu_alpha.
SWIGLU_ALPHA = 1.702


def gpt_oss_metadata(config: dict) -> list[tuple[str, object]]:
    arch = MODEL_ARCH_NAMES[MODEL_ARCH.GPT_OSS]
    meta = common_metadata(config, arch) + moe_metadata(config, arch, expert_count(config))
    meta += [
        (ATTN.SLIDING_WINDOW.format(arch=arch), int(config["sliding_window"])),
        (LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=arch), int(config["intermediate_size"])),
    ]
    return meta


SPEC = ArchSpec(
    model_type="gpt_oss",
    gguf_arch=MODEL_ARCH.GPT_OSS,
    layer_tensors=GPT_OSS_LAYER,
    expert_prefix="mlp.experts",
    expert_projections=QWEN_EXPERTS,
    metadata=gpt_oss_metadata,
    chat_format="harmony",
    expert_count_fields=("num_local_experts", "num_experts"),
    experts_per_token_fields=("num_experts_per_tok", "experts_per_token"),
    gate_up_interleaved=True,
    # the norm before the MoE is llama.cpp's attn_post_norm here, not ffn_norm
    required_layer_kinds=lambda config, bid: (T.ATTN_NORM, T.ATTN_POST_NORM, T.ATTN_OUT),
)
