"""Qwen3-30B-A3B, Qwen3-235B-A22B (also FP8): Qwen2-MoE without the shared expert or qkv
bias, with per-head q/k RMSNorm. References: llama.cpp's conversion/qwen.py
(`Qwen3MoeModel`); transformers' modeling_qwen3_moe.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from converters.archs.metadata import qwen_moe_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import QK_NORM, QWEN_EXPERTS, QWEN_MOE_LAYER

SPEC = ArchSpec(
    model_type="qwen3_moe",
    gguf_arch=MODEL_ARCH.QWEN3MOE,
    layer_tensors={**QWEN_MOE_LAYER, **QK_NORM},
    expert_prefix="mlp.experts",
    expert_projections=QWEN_EXPERTS,
    metadata=qwen_moe_metadata(MODEL_ARCH.QWEN3MOE),
    chat_format="chatml",
)
