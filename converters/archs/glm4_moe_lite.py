"""GLM-4.7-Flash: GLM-4.5's MoE (sigmoid + correction bias, shared expert, dense first layer,
renormalised and scaled) with DeepSeek's multi-head latent attention, which llama.cpp runs
as its deepseek2 architecture (MLA stored as MQA, kv_b_proj split). Unlike DeepSeek-V3, the
NextN/MTP layer goes into the GGUF (one more block, `{arch}.nextn_predict_layers`), and the
vocabulary's special tokens are GLM's.

References: llama.cpp's conversion/glm.py (`Glm4MoeLiteModel`, a DeepseekV2Model);
transformers' modeling_glm4_moe_lite.py.
"""

from __future__ import annotations

from dataclasses import replace

from converters.archs import deepseek_v2, deepseek_v3, glm4_moe
from converters.archs.metadata import LLM
from converters.archs.tensors import NEXTN

V3_METADATA = deepseek_v2.deepseek_metadata(default_scoring="sigmoid", default_topk="noaux_tc")


def carries_nextn(metadata: dict) -> bool:
    """A deepseek2 GGUF with nextn blocks: llama.cpp's converter keeps them for GLM-4.7-Flash
    and drops them for DeepSeek-V3."""
    return bool(metadata.get("deepseek2.nextn_predict_layers"))


def glm4_moe_lite_metadata(config: dict) -> list[tuple[str, object]]:
    nextn = int(config.get("num_nextn_predict_layers") or 0)
    arch = deepseek_v2.SPEC.arch_name
    meta = V3_METADATA({**config, "num_hidden_layers": int(config["num_hidden_layers"]) + nextn})
    written = {k for k, _ in meta}
    # as llama.cpp's converter: the group limit whenever the config names one (1 = none)
    for field, template in (
        ("n_group", LLM.EXPERT_GROUP_COUNT),
        ("topk_group", LLM.EXPERT_GROUP_USED_COUNT),
    ):
        key = template.format(arch=arch)
        if config.get(field) is not None and key not in written:
            meta.append((key, int(config[field])))
    if nextn:
        meta.append((LLM.NEXTN_PREDICT_LAYERS.format(arch=arch), nextn))
    return meta


SPEC = replace(
    deepseek_v3.SPEC,
    model_type="glm4_moe_lite",
    layer_tensors={**deepseek_v2.DEEPSEEK_LAYER, **NEXTN},
    metadata=glm4_moe_lite_metadata,
    aliases=(),
    recognise_gguf=lambda metadata: (
        deepseek_v2.routes_with_sigmoid(metadata) and carries_nextn(metadata)
    ),
    chat_format="glm",
    gguf_keeps_nextn=True,
    special_tokens=glm4_moe.SPEC.special_tokens,
)
