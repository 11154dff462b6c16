"""Decode attention over a bf16 KV cache without a float32 copy of it (kv_attention.cpp).

A decode step's attention reads every cached key and value once: at 16k positions of the
bench model (4 KV heads of 64) that is 16 MiB a layer in bf16, and bound by memory. torch's
paths each cost a multiple of it: converting K and V to float32 for a float32 matmul writes
twice the bytes and reads them again, on every step; oneDNN's bf16 matmul is fast but
rounds the scores to bf16 (8 bits: at logits near 10, a few percent off in probability);
scaled_dot_product_attention's CPU flash kernel is built for long queries and ran slower
than the copy for one. The kernel widens each bf16 row in registers and keeps float32
products and sums, so it computes what the float32 copy does, reading half the bytes once.
Measured against those paths in one run: tests/benchmarks/bench_long_decode.py.

Built once per machine by native_build.py (AVX-512F only, about 10 s). Where the CPU lacks
AVX-512, no compiler is present or the build fails, `available()` is False (one warning
with the reason) and attention converts the cache as before; ITAMAE_KV_KERNEL=0 turns it
off (the benchmark compares the two).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from . import native_build

SOURCE = Path(__file__).with_name("kv_attention.cpp")
CPU_FLAGS = ("avx512f", "fma")
CFLAGS = ["-O3", "-mavx512f", "-mfma"]

# False: attention converts the cache as before (benchmarks compare the two in one process;
# the compiled step keys its graphs on it, so set it before the model loads or compiles).
READ_IN_PLACE = True


@functools.cache
def available() -> bool:
    """True once the kernel is built and loaded (the ops torch.ops.itamae_attn.*)."""
    return native_build.load_kernel("bf16 KV-cache attention kernel", "ITAMAE_KV_KERNEL", CPU_FLAGS, "itamae_attn", SOURCE, CFLAGS,
                                    _register_fake, "decode attention converts the cache to float32 instead (slower at long contexts)")  # fmt: skip


def applies(cache: torch.Tensor) -> bool:
    """Whether attention reads this cache tensor [..., S, D] through the kernel here."""
    return READ_IN_PLACE and fits(cache) and available()


def fits(cache: torch.Tensor) -> bool:
    """The tensors the kernel reads: bf16 on the CPU, rows contiguous, D a multiple of 16
    (float32 caches need no conversion in the first place)."""
    return (cache.dtype == torch.bfloat16 and cache.device.type == "cpu"
            and cache.stride(-1) == 1 and cache.shape[-1] % 16 == 0)  # fmt: skip


def scores(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """q [H, G, D] float32, k [H, S, D] bf16 -> q k^T [H, G, S] float32 (unscaled). With
    `valid` (0-d int64) only the first `valid` positions are read, the rest are 0: for the
    caller to mask (the compiled step, over the cache's whole capacity)."""
    return torch.ops.itamae_attn.scores(q, k, valid)


def mix(p: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """p [H, G, S] float32, v [H, S, D] bf16 -> p v [H, G, D] float32; with `valid`, the
    positions from it on are skipped (their p must be 0)."""
    return torch.ops.itamae_attn.mix(p, v, valid)


def _register_fake() -> None:
    """Shapes for torch.compile: the compiled decode step calls the ops inside its graph
    (the cache's capacity S stays a symbol, so a grown cache is the same graph)."""

    @torch.library.register_fake("itamae_attn::scores")
    def _(q, k, valid=None):
        return q.new_empty(k.shape[0], q.shape[1], k.shape[1])

    @torch.library.register_fake("itamae_attn::mix")
    def _(p, v, valid=None):
        return p.new_empty(v.shape[0], p.shape[1], v.shape[2])
