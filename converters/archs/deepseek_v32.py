"""DeepSeek-V3.2 (-Exp): DeepSeek-V3's weights plus one lightning indexer per attention
layer (`self_attn.indexer.{wq_b,wk,k_norm,weights_proj}`), DeepSeek Sparse Attention.

The torch engine runs it (engine/torch/models/deepseek_v32.py). GGUF conversion is refused:
llama.cpp writes it as its own arch "deepseek32" (conversion/deepseek.py,
`DeepseekV32Model`: the indexer's keys and the MTP block kept as blk.{num_hidden_layers}),
which the gguf package Itamae writes with (0.19.0, the newest on PyPI) does not define.
Writing it as "deepseek2" instead would drop the indexer and run a different model.

References: transformers' modeling_deepseek_v32.py; llama.cpp's conversion/deepseek.py.
"""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_TENSOR as T

from converters.archs import deepseek_v3
from converters.core.errors import UnsupportedArchitecture


def _no_gguf(config: dict) -> list[tuple[str, object]]:
    raise UnsupportedArchitecture(
        "Itamae cannot write DeepSeek-V3.2 as GGUF yet: llama.cpp stores it as the "
        "'deepseek32' architecture, which the gguf package (0.19.0) does not define.",
        "Run the folder in Itamae's torch engine (--engine torch), or convert it with "
        "llama.cpp's own convert_hf_to_gguf.py and open the .gguf file.",
    )


# gguf-py's tensor_mapping.py (DSA entries); the kinds exist in gguf 0.19.0
INDEXER = {
    "self_attn.indexer.wq_b.weight": (T.INDEXER_ATTN_Q_B, ".weight"),
    "self_attn.indexer.wk.weight": (T.INDEXER_ATTN_K, ".weight"),
    "self_attn.indexer.k_norm.weight": (T.INDEXER_K_NORM, ".weight"),
    "self_attn.indexer.k_norm.bias": (T.INDEXER_K_NORM, ".bias"),
    "self_attn.indexer.weights_proj.weight": (T.INDEXER_PROJ, ".weight"),
}

SPEC = replace(
    deepseek_v3.SPEC,
    model_type="deepseek_v32",
    layer_tensors={**deepseek_v3.SPEC.layer_tensors, **INDEXER},
    metadata=_no_gguf,
    aliases=(),
    recognise_gguf=lambda metadata: False,  # llama.cpp's file says "deepseek32", not deepseek2
)
