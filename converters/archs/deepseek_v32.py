"""DeepSeek-V3.2 (-Exp): DeepSeek-V3's weights plus one lightning indexer per attention
layer (`self_attn.indexer.{wq_b,wk,k_norm,weights_proj}`), DeepSeek Sparse Attention.

GGUF: llama.cpp's arch "deepseek32" (conversion/deepseek.py, `DeepseekV32Model`;
src/models/deepseek32.cpp): V3's keys and tensors under that arch, plus the indexer's
tensors (`blk.N.indexer.*`) and its head count, key length and top-k. The gguf package
(0.19.0) has the indexer's tensor kinds and keys but no MODEL_ARCH for "deepseek32", so
the name is given as a string. The multi-token-prediction layer is left out, as llama.cpp's
converter does with --no-mtp (by default it keeps it as blk.{num_hidden_layers}, a draft
head for speculative decoding, which Itamae does not run).

References: transformers' modeling_deepseek_v32.py; llama.cpp's conversion/deepseek.py,
gguf-py/gguf/tensor_mapping.py (the DSA entries).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gguf import MODEL_TENSOR as T
from gguf import Keys

from converters.archs import deepseek_v2, deepseek_v3

ARCH = "deepseek32"
INDEXER = {
    "self_attn.indexer.wq_b.weight": (T.INDEXER_ATTN_Q_B, ".weight"),
    "self_attn.indexer.wk.weight": (T.INDEXER_ATTN_K, ".weight"),
    "self_attn.indexer.k_norm.weight": (T.INDEXER_K_NORM, ".weight"),
    "self_attn.indexer.k_norm.bias": (T.INDEXER_K_NORM, ".bias"),
    "self_attn.indexer.weights_proj.weight": (T.INDEXER_PROJ, ".weight"),
}
_v3_metadata = deepseek_v2.deepseek_metadata("sigmoid", "noaux_tc", arch=ARCH)


def metadata(config: dict) -> list[tuple[str, object]]:
    indexer = Keys.Attention.Indexer
    return [
        *_v3_metadata(config),
        (indexer.HEAD_COUNT.format(arch=ARCH), int(config["index_n_heads"])),
        (indexer.KEY_LENGTH.format(arch=ARCH), int(config["index_head_dim"])),
        (indexer.TOP_K.format(arch=ARCH), int(config["index_topk"])),
    ]


SPEC = replace(
    deepseek_v3.SPEC,
    model_type="deepseek_v32",
    gguf_arch_name=ARCH,
    layer_tensors={**deepseek_v3.SPEC.layer_tensors, **INDEXER},
    metadata=metadata,
    aliases=(),
    recognise_gguf=lambda metadata: True,  # the only family llama.cpp calls deepseek32
    # V3.2 ships its chat encoding as Python and no template; this renders what it renders
    chat_template=Path(__file__).with_name("deepseek_v32_chat.jinja").read_text(encoding="utf-8"),
)
