"""Mixtral 8x7B / 8x22B: Llama attention with a softmax top-2 MoE, experts spelled
`block_sparse_moe.experts.{e}.w1` (gate), `w3` (up), `w2` (down) as Mistral publishes them.

llama.cpp runs Mixtral as the llama architecture with stacked experts (conversion/llama.py),
so a GGUF header says "llama" and has an expert count.
"""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_TENSOR as T

from converters.archs import llama
from converters.archs.tensors import ATTENTION, MIXTRAL_EXPERTS

SPEC = replace(
    llama.SPEC,
    model_type="mixtral",
    layer_tensors={**ATTENTION, "block_sparse_moe.gate.weight": (T.FFN_GATE_INP, ".weight")},
    expert_prefix="block_sparse_moe.experts",
    expert_projections=MIXTRAL_EXPERTS,
    aliases=(),
    recognise_gguf=lambda metadata: not llama.is_dense_llama(metadata),
    chat_format="mistral",
)
