"""Qwen3.5-35B-A3B and larger (Qwen3.5-MoE): Qwen3-Next's hybrid of Gated DeltaNet and gated
attention with separate linear-attention projections (in_proj_qkv, in_proj_z, in_proj_b,
in_proj_a), every layer MoE with top-k renormalised, interleaved MRoPE (on text, where the
three position streams are equal, plain RoPE over the rotary dims), published as a
vision-language model: the text config under `text_config`, the language model under
`model.language_model.` (archs.normalise_config and archs.text_model_name lift both; the
vision tower and the MTP head are skipped, as llama.cpp's text converter does).

llama.cpp wants the value heads tiled over the key heads rather than grouped by them
(converters/formats/gguf_linear_attention.py). References: llama.cpp's conversion/qwen.py
(`Qwen3_5MoeTextModel`, `_LinearAttentionVReorderBase`, `_Qwen35MRopeMixin`) and
src/models/qwen35moe.cpp; transformers' modeling_qwen3_5_moe.py.
"""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, Keys
from gguf import MODEL_TENSOR as T

from converters.archs import qwen3_next
from converters.archs.rope import rope_parameters
from converters.archs.tensors import (
    GATED_DELTANET_SPLIT,
    GATED_SHARED_EXPERT,
    NEG_EXP,
    QK_NORM,
    QWEN_MOE_LAYER,
    SQUEEZE,
    V_REORDER,
)

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN35MOE]
DEFAULT_MROPE_SECTION = [11, 11, 10]  # transformers' and llama.cpp's default


def metadata(config: dict) -> list[tuple[str, object]]:
    """Qwen3-Next's keys under qwen35moe, plus the MRoPE sections (padded to four)."""
    here = qwen3_next.ARCH + "."
    meta = [(ARCH + "." + k.removeprefix(here), v) for k, v in qwen3_next.metadata(config)]
    sections = list(rope_parameters(config).get("mrope_section") or DEFAULT_MROPE_SECTION)
    sections += [0] * (4 - len(sections))
    return [*meta, (Keys.Rope.DIMENSION_SECTIONS.format(arch=ARCH), [int(s) for s in sections])]


SPEC = replace(
    qwen3_next.SPEC,
    model_type="qwen3_5_moe",
    gguf_arch=MODEL_ARCH.QWEN35MOE,
    layer_tensors={
        **QWEN_MOE_LAYER,
        **QK_NORM,
        **GATED_SHARED_EXPERT,
        **GATED_DELTANET_SPLIT,
        "post_attention_layernorm.weight": (T.ATTN_POST_NORM, ".weight"),
    },
    metadata=metadata,
    transforms={
        **{k: v for k, v in qwen3_next.SPEC.transforms.items() if "linear_attn" not in k},
        "linear_attn.A_log": f"{NEG_EXP}+{V_REORDER}heads",
        "linear_attn.dt_bias": f"{V_REORDER}heads",
        "linear_attn.in_proj_b.weight": f"{V_REORDER}heads",
        "linear_attn.in_proj_a.weight": f"{V_REORDER}heads",
        "linear_attn.conv1d.weight": f"{SQUEEZE}+{V_REORDER}v_rows",
        "linear_attn.in_proj_qkv.weight": f"{V_REORDER}v_rows",
        "linear_attn.in_proj_z.weight": f"{V_REORDER}rows",
        "linear_attn.out_proj.weight": f"{V_REORDER}columns",
    },
)
