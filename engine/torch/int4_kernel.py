"""Decode's int4 matrix-vector product: a small AVX-512 VNNI kernel (int4_matvec.cpp).

One activation row times int4 weights is bound by how fast the nibbles stream in and are
unpacked. torch's `_weight_int4pack_mm_for_cpu` (gpt-fast's kernel) converts every code to
float; the kernel here follows llama.cpp's Q4_0 recipe instead: the row is rounded to int8
per group of 64 and the codes are multiplied as integers (vpdpbusd), with one float
multiply-add per 128 weights. It reads the torch format's own nibble layout (no repacked
copy), and gathers the chosen experts out of stacked rows in the same parallel loop, so
decode's K experts of a layer are one call per projection; `experts` runs both projections
and the activation between them as one operator, which the compiled decode step calls
inside its graph (compiled_step._moe) and the MoE block calls outside it: the same bits.

Measured against the peers in one run (tests/benchmarks/bench_int4_kernel.py; figures and
load in README's Engines section): the top-4 experts step (hidden 1024, FFN 768, 32 experts)
1.14x torch's kernel at 1 thread and 2.19x at 2 (one thread-pool wake-up per projection
instead of one per expert), an Inductor-generated gather + dequantize + dot 0.05x. The
kernel once read four rows a pass (each activation block loaded once for four); their
interleaved loads, 512 bytes apart, kept the hardware prefetcher at about 9 GB/s a core
where a plain read of the same bytes streams 22, so it read like a compute-bound kernel
although in cache it runs at 24-27 GB/s a core. Read one row a pass with a software
prefetch, it streams about as the plain read does: on the 151,936 x 1024 output layer (2
threads, load 7 on the 2 cores: every figure slow, the ratios within one run) 1.87x the
four-row source in wall time and 1.94x in CPU time, 0.87x a plain read of its bytes in CPU
time (the old source built beside it, one process), and 1.58x torch's kernel in wall time,
1.76x in CPU time (bench_int4_kernel). Its output is the same bits as the four-row pass.

The activation row rounds to 8 bits per group of 64 (llama.cpp: per 32), as FBGEMM's int8
decode kernel rounds it per row: about what bf16 keeps already, so the kernel runs for bf16
decode only; float32 activations keep the exact dequantize-then-matmul (layers.Int4Linear).

Built once per machine by native_build.py (g++ and ninja, about 15 s, with OpenMP so that
`at::parallel_for` uses torch's threads). Where the CPU lacks
AVX-512 VNNI, no compiler is present or the build fails, `available()` says False (with a
warning naming the reason, once) and the engine runs today's kernel; ITAMAE_INT4_KERNEL=0
turns it off (benchmarks compare the two).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from . import native_build

SOURCE = Path(__file__).with_name("int4_matvec.cpp")
GROUP = 64  # the only group the kernel reads (the torch format's INT4_GROUP)
BLOCK = 128  # the input size must be a multiple of this (two groups a step)
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c", "fma")
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma"]


@functools.cache
def available() -> bool:
    """True once the kernel is built and loaded into this process (the op
    torch.ops.itamae_int4.matvec); False, with one warning, where it cannot be."""
    return native_build.load_kernel("int4 decode kernel", "ITAMAE_INT4_KERNEL", CPU_FLAGS,
                                    "itamae_int4", SOURCE, CFLAGS, _register_fake,
                                    "int4 weights run through torch's "
                                    "_weight_int4pack_mm_for_cpu instead (slower)")  # fmt: skip


def applies(in_features: int, group: int) -> bool:
    """The shapes the kernel takes: groups of 64, an input size a multiple of 128."""
    return group == GROUP and in_features % BLOCK == 0


def matvec(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
           idx: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """x [A, C] (A = 1, or one row per chosen matrix); q [N, R, C/2] uint8, scale and zero
    [N, R, C/64] float16 (stacked views, any stride between matrices); idx [K] int64
    -> [K, R] float32: row k is x[k or 0] times matrix idx[k]."""
    return torch.ops.itamae_int4.matvec(x.float().contiguous(), q, scale, zero, idx)


def _register_fake() -> None:
    """Shapes for torch.compile: the compiled decode step calls the op inside its graph."""

    @torch.library.register_fake("itamae_int4::matvec")
    def _(x, q, scale, zero, idx):
        return x.new_empty(idx.shape[0], q.shape[1])

    @torch.library.register_fake("itamae_int4::experts")
    def _(x, gate_up_q, gate_up_scale, gate_up_zero, down_q, down_scale, down_zero, idx, act):
        return x.new_empty(idx.shape[0], down_q.shape[1])


def experts(x: torch.Tensor, *rows_idx_act) -> torch.Tensor:
    """x [1, H] float32; gate_up q, scale, zero, then down's (stacked views), idx [K], the
    activation's name (one of KERNEL_ACTS) -> [K, H] float32: the K experts' outputs, in one
    operator (gate/up, act(gate) * up with ATen's operators, down)."""
    return torch.ops.itamae_int4.experts(x, *rows_idx_act)


# the activations int4_matvec.cpp's `gated` runs (as layers.gated_activation does), and
# DeepSeek-V4's clamped SiLU by prefix; others (gpt-oss's clamped SwiGLU) take the plain path
KERNEL_ACTS = ("silu", "relu", "gelu", "gelu_pytorch_tanh")


class Int4Experts:
    """Decode's K chosen int4 experts in one operator (gate/up for all K, then down):
    `__call__(x, views, idx) -> [K, H]` float32 over stacked expert views
    (experts.stacked_views), as compiled.FusedExperts does for int8; `None` from
    `for_scheme` where the kernel does not apply. An expert's output depends on its own
    row and the token only (each activation row is quantized on its own, each output row
    summed by the same loop), so it is the same bits from the fast tier's slots or the
    memory-mapped file, alone or with any other experts: placement does not change it."""

    scheme = "int4_group"
    failed: str | None = None  # the protocol of FusedExperts: this kernel never half-fails

    def __init__(self, act: str):
        self.act = act

    @classmethod
    def for_scheme(cls, scheme: str, act: str, device: torch.device) -> Int4Experts | None:
        from .layers import CLAMPED_SILU

        known = act in KERNEL_ACTS or act.startswith(CLAMPED_SILU)
        if scheme != cls.scheme or device.type != "cpu" or not known or not available():
            return None
        return cls(act)

    @staticmethod
    def applies(views: dict) -> bool:
        """The experts' shapes are the kernel's, without biases (gpt-oss carries them, and
        its sizes do not fit either)."""
        hidden, inter = views["down.q"].shape[1], views["down.q"].shape[2] * 2
        return "gate_up.bias" not in views and applies(hidden, GROUP) and applies(inter, GROUP)

    def __call__(self, x: torch.Tensor, views: dict, idx: torch.Tensor) -> torch.Tensor | None:
        """None where the kernel does not apply (`applies`): the caller runs the plain path."""
        if not self.applies(views):
            return None
        from .compiled import _ARGS

        rows = (views[name] for name in _ARGS[self.scheme])
        return experts(x.reshape(1, -1).float().contiguous(), *rows, idx, self.act)
