"""OLMoE-1B-7B: softmax top-8 over 64 experts, q/k RMSNorm over the whole projection.
References: llama.cpp's conversion/olmo.py (`OlmoeModel`); transformers' modeling_olmoe.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

from converters.archs.metadata import common_metadata, expert_count, moe_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import QK_NORM, QWEN_EXPERTS, QWEN_MOE_LAYER


def olmoe_metadata(config: dict) -> list[tuple[str, object]]:
    arch = MODEL_ARCH_NAMES[MODEL_ARCH.OLMOE]
    # llama.cpp's converter writes a fixed 1e-5 here; the config's own epsilon is what the
    # model was trained with, so Itamae keeps it (common_metadata already did).
    return common_metadata(config, arch) + moe_metadata(config, arch, expert_count(config))


SPEC = ArchSpec(
    model_type="olmoe",
    gguf_arch=MODEL_ARCH.OLMOE,
    layer_tensors={**QWEN_MOE_LAYER, **QK_NORM},
    expert_prefix="mlp.experts",
    expert_projections=QWEN_EXPERTS,
    metadata=olmoe_metadata,
    chat_format="tulu",
)
