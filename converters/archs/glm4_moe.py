"""GLM-4.5, 4.6, 4.7 and GLM-4.5-Air: Llama-style GQA with qkv bias, optional per-head q/k
RMSNorm and RoPE on the first half of each head (`partial_rotary_factor`, NeoX pairs);
DeepSeek-V3's sigmoid routing (correction bias, group-limited top-k, renormalisation, routed
scaling) with shared experts after `first_k_dense_replace` dense layers. The NextN/MTP layer
(model.layers.{num_hidden_layers}) goes into the GGUF as llama.cpp's converter puts it there:
one more block with its nextn.* tensors, `{arch}.nextn_predict_layers`, and a block count
that includes it (llama.cpp runs the trunk without it).

References: llama.cpp's conversion/glm.py (`Glm4MoeModel`) and src/models/glm4-moe.cpp;
transformers' modeling_glm4_moe.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, ExpertGatingFuncType
from gguf import MODEL_TENSOR as T

from converters.archs.deepseek_v2 import DEEPSEEK_LAYER
from converters.archs.metadata import LLM, ROPE, common_metadata, expert_count, moe_metadata
from converters.archs.rope import rope_parameters
from converters.archs.spec import ArchSpec
from converters.archs.tensors import ATTENTION, NEXTN, QK_NORM, QWEN_EXPERTS

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.GLM4_MOE]
GLM_MOE_LAYER = {
    **ATTENTION,
    **QK_NORM,  # GLM-4.5 and 4.6 (use_qk_norm); Air has none
    **{k: v for k, v in DEEPSEEK_LAYER.items() if k.startswith("mlp.")},
    **NEXTN,
    # llama.cpp names GLM's pre-FFN norm after the attention (blk.N.post_attention_norm)
    "post_attention_layernorm.weight": (T.ATTN_POST_NORM, ".weight"),
}


def rotary_dim(config: dict) -> int:
    """RoPE covers the first partial_rotary_factor of each head (0.5 when unsaid, as
    transformers' Glm4MoeConfig and llama.cpp's converter assume)."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    params = rope_parameters(config)
    factor = params.get("partial_rotary_factor") or config.get("partial_rotary_factor") or 0.5
    return int(head_dim * float(factor))


def glm4_moe_metadata(config: dict) -> list[tuple[str, object]]:
    def key(template: str) -> str:
        return template.format(arch=ARCH)

    nextn = int(config.get("num_nextn_predict_layers") or 0)
    blocks = int(config["num_hidden_layers"]) + nextn
    meta = common_metadata({**config, "num_hidden_layers": blocks}, ARCH, with_vocab_size=False)
    meta += moe_metadata(config, ARCH, expert_count(config))
    meta += [
        (key(ROPE.DIMENSION_COUNT), rotary_dim(config)),
        (key(LLM.EXPERT_FEED_FORWARD_LENGTH), int(config["moe_intermediate_size"])),
        (key(LLM.EXPERT_SHARED_COUNT), int(config.get("n_shared_experts") or 0)),
        (key(LLM.LEADING_DENSE_BLOCK_COUNT), int(config.get("first_k_dense_replace") or 0)),
        (key(LLM.EXPERT_GATING_FUNC), int(ExpertGatingFuncType.SIGMOID)),
        (key(LLM.EXPERT_WEIGHTS_SCALE), float(config.get("routed_scaling_factor") or 1.0)),
        (key(LLM.EXPERT_WEIGHTS_NORM), bool(config.get("norm_topk_prob", True))),
    ]
    # As llama.cpp's converter: the group limit whenever the config names one (1 = none)
    for field, template in (
        ("n_group", LLM.EXPERT_GROUP_COUNT),
        ("topk_group", LLM.EXPERT_GROUP_USED_COUNT),
    ):
        if config.get(field) is not None:
            meta.append((key(template), int(config[field])))
    if nextn:
        meta.append((key(LLM.NEXTN_PREDICT_LAYERS), nextn))
    return meta


SPEC = ArchSpec(
    model_type="glm4_moe",
    gguf_arch=MODEL_ARCH.GLM4_MOE,
    layer_tensors=GLM_MOE_LAYER,
    expert_prefix="mlp.experts",
    expert_projections=QWEN_EXPERTS,
    metadata=glm4_moe_metadata,
    chat_format="glm",
    gguf_keeps_nextn=True,
    # llama.cpp's _set_vocab_glm: a turn ends at the next <|user|>, a tool call waits at
    # <|observation|> (with [gMASK] as bos where the tokenizer names none)
    special_tokens={
        "bos": "[gMASK]",
        "eot": "<|user|>",
        "unk": "<|endoftext|>",
        "eom": "<|observation|>",
    },
)
