"""Qwen1.5-MoE and Qwen2-57B-A14B: qkv bias, softmax top-k, one shared expert with a
sigmoid gate. References: llama.cpp's conversion/qwen.py (`Qwen2MoeModel`); transformers'
modeling_qwen2_moe.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from converters.archs.metadata import qwen_moe_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import GATED_SHARED_EXPERT, QWEN_EXPERTS, QWEN_MOE_LAYER

SPEC = ArchSpec(
    model_type="qwen2_moe",
    gguf_arch=MODEL_ARCH.QWEN2MOE,
    layer_tensors={**QWEN_MOE_LAYER, **GATED_SHARED_EXPERT},
    expert_prefix="mlp.experts",
    expert_projections=QWEN_EXPERTS,
    metadata=qwen_moe_metadata(MODEL_ARCH.QWEN2MOE),
    chat_format="chatml",
)
