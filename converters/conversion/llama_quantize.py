"""K-quants and MoE recipes through llama.cpp's own quantizer, never re-implemented here.

`llama_model_quantize` (llama.h, src/llama-quant.cpp, reached through llama-cpp-python's
ctypes binding) reads a full-precision GGUF and writes the quantized one, choosing per
tensor with its own mixture rules (Q4_K_M etc.) unless a regex override
(`tt_overrides`: pattern, ggml type; terminated by a NULL pattern) names the type.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from converters.conversion.fallbacks import Fallback, LlamaLogCapture, parse_llama_log
from converters.conversion.recipes import Recipe
from converters.core.errors import ItamaeError
from converters.formats.gguf_header import read_contents

# llama.cpp processes a tensor in slabs of rows up to this size (its default is 8 GiB);
# 1 GiB keeps the quantizer's memory bounded on small machines at no measurable cost.
QUANT_BUFFER_BYTES = 1 << 30


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:  # the binding is a dependency, but may be missing in a dev tree
        raise ItamaeError(
            "K-quant and MoE recipes need llama-cpp-python, which is not installed.",
            "Install it (pip install llama-cpp-python==0.3.36) or choose Q8_0/Q4_0.",
        ) from e
    return llama_cpp


def quantize_with_llama_cpp(
    src: Path, dest: Path, recipe: Recipe, threads: int = 0
) -> list[Fallback]:
    """Quantize `src` into `dest`; returns the tensors llama.cpp gave a fallback type."""
    llama_cpp = require_llama_cpp()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(recipe.llama_ftype)
    params.nthread = threads or (os.cpu_count() or 1)
    params.max_buf_size = QUANT_BUFFER_BYTES
    if recipe.embeddings is not None:
        params.token_embedding_type = int(recipe.embeddings)
        params.output_tensor_type = int(recipe.embeddings)
    # keep the pattern bytes and the array alive until the call returns
    patterns = [pattern.encode() for pattern, _ in recipe.overrides]
    overrides = (llama_cpp.llama_model_tensor_override * (len(patterns) + 1))()
    for i, (pattern, (_, qtype)) in enumerate(zip(patterns, recipe.overrides, strict=True)):
        overrides[i].pattern = pattern
        overrides[i].type = int(qtype)
    overrides[len(patterns)].pattern = None
    if patterns:
        params.tt_overrides = ctypes.cast(
            overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override)
        )
    with llama_cpp._utils.suppress_stdout_stderr(disable=False), LlamaLogCapture() as log:
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dest).encode(), ctypes.byref(params)
        )
    if status != 0:
        raise ItamaeError(
            f"llama.cpp's quantizer failed on the {recipe.name} recipe (status {status}).",
            "Try a direct recipe (Q8_0, Q4_0), or report the model and recipe.",
        )
    got = {t.name: t.type.name for t in read_contents(dest).tensors}
    return parse_llama_log(log.text, got)
