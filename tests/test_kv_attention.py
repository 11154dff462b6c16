"""Decode attention over a bf16 KV cache read in place (engine/torch/kv_attention.py).

- The kernel's two products against float64 on the same bf16 values: float32 accuracy, at
  lengths that are not multiples of its steps (4 positions, chunks of 256), on strided
  views of a cache buffer, for head dims that take its 64-wide and 16-wide column blocks,
  and G = 1..8 query heads per KV head.
- decode_attention on a bf16 cache: the kernel path gives what the float32 copy gave (the
  same values up to the bf16 rounding of the output), and is the path taken.
- It builds on this machine where the CPU has AVX-512 (a broken build fails here); without
  a compiler the engine warns and attention converts the cache as before.
The compiled decode step's use of it (bf16, head dim 64) is covered by
test_torch_compiled_step.py: the same tokens within bf16 rounding, no recompiles as the
cache grows.
"""

from __future__ import annotations

import pytest
import torch

from engine.torch import kv_attention, native_build
from engine.torch.attention import decode_attention
from tests.kernel_fallback import no_compiler, printed_in_fresh_python

AVX512 = not native_build.missing_flags(kv_attention.CPU_FLAGS)
needs_avx512 = pytest.mark.skipif(not AVX512, reason="the CPU lacks AVX-512")


@needs_avx512
def test_kernel_builds_on_this_cpu():
    assert kv_attention.available()


def _cache(heads: int, length: int, d: int, gen) -> torch.Tensor:
    """A view [H, length, D] of a larger buffer, as the cache's narrowed buffers are."""
    buf = torch.randn(heads, length + 37, d, generator=gen).bfloat16()
    return buf[:, :length]


@needs_avx512
@pytest.mark.parametrize("length", [1, 3, 255, 257, 1030])
@pytest.mark.parametrize(("groups", "d"), [(4, 64), (1, 128), (8, 80), (2, 16)])
def test_products_match_float64(length, groups, d):
    gen = torch.Generator().manual_seed(length * 100 + d)
    heads = 3
    k, v = _cache(heads, length, d, gen), _cache(heads, length, d, gen)
    assert not k.is_contiguous()
    q = torch.randn(heads, groups, d, generator=gen) * 3
    want = q.double() @ k.double().transpose(-1, -2)
    got = kv_attention.scores(q, k)
    assert got.shape == (heads, groups, length) and got.dtype == torch.float32
    assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-6
    p = torch.rand(heads, groups, length + 5, generator=gen)[..., :length]  # strided rows
    want = p.double() @ v.double()
    got = kv_attention.mix(p, v)
    assert got.shape == (heads, groups, d) and got.dtype == torch.float32
    assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-6


@needs_avx512
@pytest.mark.parametrize("valid", [0, 1, 200, 256, 300, 511])
def test_valid_positions_read_alone_give_the_same_bits(valid):
    """The compiled step passes the cache's whole capacity and how many positions hold
    keys: scores reads those (0 beyond them, for the caller's mask), mix skips the rest,
    whose probabilities are 0 after the mask; the same bits as reading everything."""
    gen = torch.Generator().manual_seed(valid)
    k, v = _cache(4, 512, 64, gen), _cache(4, 512, 64, gen)
    q = torch.randn(4, 4, 64, generator=gen)
    n = torch.tensor(valid)
    got = kv_attention.scores(q, k, n)
    assert torch.equal(got[..., :valid], kv_attention.scores(q, k)[..., :valid])
    assert torch.equal(got[..., valid:], torch.zeros_like(got[..., valid:]))
    p = torch.rand(4, 4, 512, generator=gen)
    p[..., valid:] = 0
    assert torch.equal(kv_attention.mix(p, v, n), kv_attention.mix(p, v))


@needs_avx512
def test_decode_attention_reads_the_bf16_cache_in_place(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 16, 1, 64, generator=gen) * 3).bfloat16()
    k, v = (_cache(4, 700, 64, gen)[None] for _ in range(2))
    in_place = decode_attention(q, k, v)
    monkeypatch.setattr(kv_attention, "READ_IN_PLACE", False)
    copied = decode_attention(q, k, v)
    # the same float32 math up to summation order: at most one bf16 step of the output apart
    step = copied.float().abs().clamp_min(1e-3) * 2**-7
    assert ((in_place.float() - copied.float()).abs() <= step).all()
    calls = []
    monkeypatch.setattr(kv_attention, "READ_IN_PLACE", True)
    monkeypatch.setattr(kv_attention, "mix", lambda p, v: calls.append(v.shape) or p @ v.float())
    decode_attention(q, k, v)
    assert calls == [(4, 700, 64)]


def test_without_a_compiler_the_engine_warns_and_converts_the_cache(tmp_path):
    code = (
        "import warnings, torch\n"
        "from engine.torch import kv_attention\n"
        "from engine.torch.attention import decode_attention\n"
        "torch.manual_seed(0)\n"
        "q, k, v = torch.randn(1, 8, 1, 64), torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float()\n"
        "ref = decode_attention(q, k, v)\n"
        "print(kv_attention.applies(k.bfloat16()), any('KV-cache attention kernel' in "
        "str(c.message) for c in caught), float((out - ref).abs().max()))\n"
    )
    applies, warned, err = printed_in_fresh_python(code, no_compiler(tmp_path))
    assert applies == "False" and (warned == "True" or not AVX512) and float(err) < 3e-2
