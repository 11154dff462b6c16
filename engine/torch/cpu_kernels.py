"""The CPU's int8 matrix-vector kernel for decode: FBGEMM's dynamic-quantized linear.

A decode step multiplies one activation row by every weight matrix once, so it is bound by
how fast weights stream from memory. torch's weight-only `_weight_int8pack_mm` converts
each int8 weight to bf16 before multiplying and reaches 4-8 GB/s on this class of CPU;
FBGEMM (the kernel library behind torch's quantized engine on x86) quantizes the activation
row to uint8 and multiplies integer by integer with AVX2/AVX-512 (VNNI where present), at
10-20 GB/s, close to the memory bandwidth. That is how llama.cpp gets its Q8_0 speed: its
CPU path quantizes activations to 8 bits as well.

The activation row gets one affine uint8 scale per call, so the kernel is used only for a
single row (decode): over a prefill's many rows one scale would be too coarse, and those
run through the weight-only kernel. Weights are repacked once into FBGEMM's layout (a copy
of the same size) by `pack_int8`.
"""

from __future__ import annotations

import functools
import warnings

import torch


@functools.cache
def int8_kernel_available() -> bool:
    """FBGEMM is built into torch on x86 (the "x86"/"fbgemm" quantized engines)."""
    engines = torch.backends.quantized.supported_engines
    return "fbgemm" in engines or "x86" in engines


@functools.cache
def _reduce_range() -> bool:
    # Without VNNI, FBGEMM sums pairs of uint8 x int8 products into int16 (vpmaddubsw), which
    # saturates on full-range activations; 7-bit activations avoid that. VNNI accumulates
    # into int32, so the full 8 bits are safe.
    vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return not (vnni is not None and vnni())


def pack_int8(qweight: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject | None:
    """FBGEMM's packed form of w[row] = qweight[row] * scale[row] (qweight int8 [out, in]);
    None where this torch cannot pack it (the caller falls back to the weight-only kernel)."""
    out = qweight.shape[0]
    try:
        with warnings.catch_warnings():
            # torch marks quantized tensors deprecated; the packed weight is all we keep
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch._make_per_channel_quantized_tensor(
                qweight, scale.double(), torch.zeros(out, dtype=torch.long), 0
            )
            return torch.ops.quantized.linear_prepack(quantized, None)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


def int8_matvec(x: torch.Tensor, packed: torch.ScriptObject) -> torch.Tensor:
    """x [..., in] with one row in all -> [..., out] in x's dtype."""
    y = torch.ops.quantized.linear_dynamic(x.float(), packed, _reduce_range())
    return y.to(x.dtype)
