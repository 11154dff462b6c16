"""Decode's int8 matrix-vector product: a small AVX-512 VNNI kernel (int8_matvec.cpp).

One activation row times int8 weights is bound by how fast the weight bytes stream in.
FBGEMM's `quantized::linear_dynamic` (cpu_kernels.py) gets near that speed, but only on a
packed copy of every weight (as large as the weight: the engine's RSS was 2.6 GiB on the
bench model against llama.cpp's 1.5), and torch reaches it through a Python-implemented op
per call in the compiled step (~48 us each). The kernel here follows llama.cpp's Q8_0 x Q8_0
recipe instead: the row is rounded to int8 per block of 64 and multiplied by the stored
int8 rows as integers (vpdpbusd), one float multiply-add per 64 weights. It reads the torch
format's own rows (no packed copy), is a C++ op that Inductor calls from the graph, and
gathers the chosen experts out of stacked rows in the same parallel loop, so decode's K
experts of a layer are one call per projection (compiled.py's `routed_int8_vnni`).

Why blocks of 64 and not one scale per row (FBGEMM's choice): activations have outlier
channels, and one scale per row lets the largest element set the step for all of them;
per block the error stays local. Measured on the bench head (tests/benchmarks/
bench_int8_kernel.py prints it), a Gaussian row with 8 channels 20x larger: relative error
of the logits against float32 dequantize-then-matmul 1.7% per block of 64, 3.9% with one
scale per row, 3.4% for FBGEMM (affine per row); bf16 activations 0.3%. The extra
multiply-add per block costs nothing measurable: the kernel is bound by memory.

Measured against the peers in one run (bench_int8_kernel.py, 2 threads, best of 8 rotating
rounds, load average 3.4-4.0 from other jobs): the 151,936 x 1024 head 1.06x FBGEMM wall
(21.9 GB/s), o 1.45x, the top-4 experts step 1.9x FBGEMM per expert and 1.0x Inductor's
gather (CPU time 1.09x).

Rounding the activation to 8 bits is about what bf16 keeps already, so the kernel runs for
bf16 decode only; float32 activations keep the exact dequantize-then-matmul.

Built once per machine by native_build.py (g++ and ninja, about 15 s, OpenMP so that
`at::parallel_for` uses torch's threads). Where the CPU lacks AVX-512 VNNI, no compiler is
present or the build fails, `available()` says False (with a warning naming the reason,
once) and the engine runs FBGEMM as before; ITAMAE_INT8_KERNEL=0 turns it off (benchmarks
compare the two).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from . import native_build

SOURCE = Path(__file__).with_name("int8_matvec.cpp")
BLOCK = 64  # activation codes per scale (int8_matvec.cpp's kBlock)
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma")
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma"]


@functools.cache
def available() -> bool:
    """True once the kernel is built and loaded into this process (the op
    torch.ops.itamae_int8.matvec); False, with one warning, where it cannot be."""
    return native_build.load_kernel("int8 decode kernel", "ITAMAE_INT8_KERNEL", CPU_FLAGS, "itamae_int8", SOURCE, CFLAGS,
                                    _register_fake, "int8 weights run through FBGEMM's packed copies instead (more memory, slower)")  # fmt: skip


def matvec(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
           idx: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """x [A, C] (A = 1, or one row per chosen matrix); q [N, R, C] int8, scale [N, R]
    float32 (stacked views, any stride between matrices); idx [K] int64 -> [K, R] float32:
    row k is x[k or 0] times matrix idx[k]."""
    return torch.ops.itamae_int8.matvec(x.float().contiguous(), q, scale, idx)


def _register_fake() -> None:
    """Shapes for torch.compile: the compiled decode step calls the op inside its graph."""

    @torch.library.register_fake("itamae_int8::matvec")
    def _(x, q, scale, idx):
        return x.new_empty(idx.shape[0], q.shape[1])
