"""Direct GGUF tensor encodings: F32, F16, BF16 and ggml's legacy block quants.

Q8_0 and Q4_0 are computed here with torch (vectorised, multi-threaded, chunked) because
they dominate conversion time; they follow, operation for operation, the reference
quantizers of the gguf package (`gguf.quants.Q8_0/Q4_0.quantize_blocks`, themselves
bit-exact with ggml-quants.c), and tests check the bytes are identical. Q4_1, Q5_0 and Q5_1
go through `gguf.quants` itself. K-quants are never written here: they come from
llama.cpp's own quantizer (see converters/llama_quantize.py).

Block layouts (ggml-common.h): Q8_0 = f16 scale + 32 int8; Q4_0 = f16 scale + 16 bytes of
nibbles (element i in the low nibble of byte i, element i+16 in the high nibble).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

Q = GGMLQuantizationType
DIRECT_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32 per step: stays in cache (3x faster than 64 MiB steps)


def block_size(qtype: Q) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def can_quantize(shape: tuple[int, ...], qtype: Q) -> bool:
    """ggml quantizes whole rows: the row length must be a multiple of the block size."""
    return shape[-1] % block_size(qtype) == 0


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape)) if shape else 1
    return n // block * type_size


def _q8_0(blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """[n, 32] float32 -> [n, 34] uint8 (written into `out` if given), as
    gguf.quants.Q8_0.quantize_blocks."""
    d = blocks.abs().amax(dim=1, keepdim=True).div_(127)
    inv = torch.where(d == 0, 0.0, 1 / d)
    q = blocks * inv
    # np_roundf, round half away from zero: the reference's sign(x) * (floor|x| +
    # floor(2 (|x| - floor|x|))) is, for every float (x - trunc(x) is exact), the same value
    # as trunc(x) + trunc(2 (x - trunc(x))), done here in place: half the time of the
    # reference's spelling in allocating passes, and Q8_0 is most of a conversion's work
    t = q.trunc()
    q.sub_(t).mul_(2).trunc_().add_(t)
    if out is None:
        out = torch.empty((blocks.shape[0], 34), dtype=torch.uint8)
    out[:, :2] = d.half().view(torch.uint8)
    out[:, 2:].view(torch.int8).copy_(q)  # the same conversion as .to(torch.int8)
    return out


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """[n, 32] float32 -> [n, 18] uint8, as gguf.quants.Q4_0.quantize_blocks."""
    imax = blocks.abs().argmax(dim=1, keepdim=True)
    d = torch.gather(blocks, 1, imax) / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.trunc(blocks * inv + 8.5).clamp(0, 15).to(torch.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    return torch.cat([d.half().view(torch.uint8), packed], dim=1)


TORCH_BLOCK_QUANTS = {Q.Q8_0: _q8_0, Q.Q4_0: _q4_0}


def encode(data: torch.Tensor, qtype: Q) -> np.ndarray:
    """One tensor (any float dtype, any shape) -> the bytes ggml stores for `qtype`, as a flat
    uint8 array. Rows are independent, so a tensor may be encoded piece by piece."""
    if qtype == Q.F32:
        return data.float().contiguous().numpy().view(np.uint8).reshape(-1)
    if qtype == Q.F16:
        return data.half().contiguous().numpy().view(np.uint8).reshape(-1)
    if qtype == Q.I32:  # integer tables (DeepSeek-V4's hash routing), never from floats
        if data.is_floating_point():
            raise ValueError("I32 is written from integer sources only")
        return data.to(torch.int32).contiguous().numpy().view(np.uint8).reshape(-1)
    if qtype == Q.MXFP4:
        # never computed here: MXFP4 arrives as ggml blocks already (gguf_plan, mxfp4.py)
        if data.dtype != torch.uint8:
            raise ValueError("MXFP4 is carried from MXFP4 sources only, never quantized here")
        return data.contiguous().numpy().reshape(-1)
    if qtype == Q.BF16:
        # torch rounds to nearest even like ggml_compute_fp32_to_bf16
        return data.bfloat16().contiguous().view(torch.uint8).numpy().reshape(-1)
    if not can_quantize(tuple(data.shape), qtype):
        raise ValueError(f"rows of {data.shape[-1]} do not split into {qtype.name} blocks")
    flat = data.reshape(-1)
    out = np.empty(nbytes(tuple(data.shape), qtype), dtype=np.uint8)
    block, type_size = GGML_QUANT_SIZES[qtype]
    step = CHUNK_ELEMENTS - CHUNK_ELEMENTS % block

    def encode_chunk(start: int) -> None:
        piece = flat[start : start + step].float().reshape(-1, block)
        first = start // block * type_size
        target = out[first : first + piece.shape[0] * type_size]
        if qtype == Q.Q8_0:  # straight into the output, no copy
            _q8_0(piece, torch.from_numpy(target).view(-1, type_size))
        else:
            target[:] = _encode_blocks(piece, qtype)

    starts = range(0, flat.numel(), step)
    if len(starts) == 1:
        encode_chunk(0)
    else:  # chunks are independent; torch and numpy release the GIL while they compute
        list(_pool().map(encode_chunk, starts))
    return out


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="encode")
    return _POOL


@contextmanager
def one_torch_thread_per_worker():
    """Encoding runs one chunk per pool thread; torch's own intra-op threads on top of that
    only contend (on a busy 2-core machine OpenMP made Q8_0 40x slower), so they are
    switched off for the duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encode_blocks(blocks: torch.Tensor, qtype: Q) -> np.ndarray:
    if qtype in TORCH_BLOCK_QUANTS:
        return TORCH_BLOCK_QUANTS[qtype](blocks).numpy().reshape(-1)
    return quants.quantize(blocks.numpy(), qtype).reshape(-1)
