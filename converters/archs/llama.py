"""Llama 2/3 and other dense Llama-layout models (Mistral 7B is the same computation).

References: llama.cpp's conversion/llama.py (`LlamaModel`: q/k rows permuted for its rope,
Llama 3.1's rope_freqs tensor); transformers' modeling_llama.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from converters.archs.metadata import llama_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import ATTENTION, DENSE_FFN, PERMUTE_K, PERMUTE_Q

LLAMA_ROPE = {"self_attn.q_proj.weight": PERMUTE_Q, "self_attn.k_proj.weight": PERMUTE_K}


def is_dense_llama(metadata: dict) -> bool:
    return not metadata.get("llama.expert_count")


SPEC = ArchSpec(
    model_type="llama",
    gguf_arch=MODEL_ARCH.LLAMA,
    layer_tensors={**ATTENTION, **DENSE_FFN},
    expert_prefix="",
    expert_projections={},
    metadata=llama_metadata,
    transforms=LLAMA_ROPE,
    aliases=("mistral",),
    recognise_gguf=is_dense_llama,
    chat_format="llama3",
)
