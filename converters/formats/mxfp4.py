"""MXFP4 weights as OpenAI publishes them (gpt-oss) and as ggml stores them.

The OCP Microscaling format: blocks of 32 values along a row's input dimension, each value
a 4-bit E2M1 float (sign bit, then an index into 0, 0.5, 1, 1.5, 2, 3, 4, 6) and one shared
E8M0 scale per block (a power of two, stored as the biased exponent 2^(e - 127)).

Published layout (transformers' integrations/mxfp4.py, `_convert_moe_packed_tensors`):
`<name>_blocks` uint8 [..., rows, blocks, 16], byte i holding value 2i in its low nibble and
value 2i+1 in its high nibble, and `<name>_scales` uint8 [..., rows, blocks].
ggml's `block_mxfp4` (ggml-common.h): the scale byte, then 16 bytes where byte j holds value
j in its low nibble and value j+16 in its high nibble. Going from one to the other only
moves nibbles (llama.cpp's conversion/gpt_oss.py `repack_mxfp4` does the same); no value
is dequantized or rounded on the way.

DeepSeek-V4 publishes its routed experts in the same format row by row (compressed-tensors'
"mxfp4-pack-quantized" layout): int8 codes [rows, cols / 2], element 2i in the low nibble,
and a float8_e8m0fnu `.scale` [rows, cols / 32]: the published blocks, unsplit
(`packed_rows_as_blocks`; llama.cpp's conversion/base.py `repack_mxfp4_blocks`).
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 32  # values per block (one scale each)
BLOCK_BYTES = 16  # packed nibbles per block
SCALE_BIAS = 127  # E8M0: 2 ** (byte - 127)
FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
BLOCKS_SUFFIX, SCALES_SUFFIX = "_blocks", "_scales"


def nibbles(blocks: torch.Tensor) -> torch.Tensor:
    """Published blocks [..., 16] uint8 -> the 32 codes [..., 32] in value order."""
    low, high = blocks & 0x0F, blocks >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[..., rows, G, 16] codes and [..., rows, G] scales -> float32 [..., rows, G * 32].

    Exact: every FP4 value times a power of two is a float32 (what transformers computes
    with its lookup table and ldexp)."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    values = lut[nibbles(blocks).long()]  # [..., rows, G, 32]
    exponents = scales.to(torch.int32) - SCALE_BIAS
    return torch.ldexp(values, exponents[..., None]).flatten(-2)


_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_FOUR = np.uint64(4)


def to_ggml_blocks(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Published [..., rows, G, 16] + [..., rows, G] -> ggml's block_mxfp4 bytes
    [..., rows, G * 17]: the scale byte, then value j | value j+16 << 4 for j < 16.

    Value k sits in source byte k // 2 (low nibble if k is even), so ggml's byte 2i takes
    the low nibbles of source bytes i and 8 + i, and byte 2i + 1 their high nibbles. The
    nibbles are moved eight bytes at a time (each half of a block as one uint64), then the
    even and odd bytes are interleaved into the output: half the time of the byte-wise
    version (this repack is the MXFP4 experts' whole cost in a conversion)."""
    source = np.ascontiguousarray(blocks.numpy()).view(np.uint64)  # [..., G, 2]
    first, second = source[..., 0], source[..., 1]  # bytes 0-7 (values 0-15), 8-15 (16-31)
    even = (first & _LOW_NIBBLES) | ((second & _LOW_NIBBLES) << _FOUR)
    odd = ((first >> _FOUR) & _LOW_NIBBLES) | (second & _HIGH_NIBBLES)
    lead = blocks.shape[:-1]
    out = np.empty((*lead, 1 + BLOCK_BYTES), dtype=np.uint8)
    out[..., 0] = scales.numpy()
    pairs = out[..., 1:].reshape(*lead, BLOCK_BYTES // 2, 2)
    pairs[..., 0] = even.view(np.uint8).reshape(*lead, BLOCK_BYTES // 2)
    pairs[..., 1] = odd.view(np.uint8).reshape(*lead, BLOCK_BYTES // 2)
    return torch.from_numpy(out).flatten(-2)


def packed_rows_as_blocks(
    codes: torch.Tensor, scales: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V4's int8 [rows, cols/2] codes and e8m0 [rows, cols/32] scales -> the
    published-blocks layout above ([rows, G, 16] and [rows, G] uint8), bits unchanged."""
    rows, half = codes.shape
    if half * 2 % BLOCK or tuple(scales.shape) != (rows, half * 2 // BLOCK):
        raise ValueError(
            f"FP4 codes {tuple(codes.shape)} with scales {tuple(scales.shape)} are not "
            f"one scale per {BLOCK} values"
        )
    blocks = codes.contiguous().view(torch.uint8).reshape(rows, -1, BLOCK_BYTES)
    return blocks, scales.contiguous().view(torch.uint8)


def mxfp4_expert(ckpt, prefix: str, e: int):
    """(gate [F, H], up [F, H], down [H, F], (gate, up, down) biases) of expert `e` of a
    gpt-oss layer as published: `{prefix}.gate_up_proj_blocks` rows interleave gate (even)
    and up (odd), dequantized exactly to float32. `ckpt` is an HFCheckpoint."""

    def weight(proj: str) -> torch.Tensor:
        name = f"{prefix}.{proj}"
        blocks = ckpt.get_row(name + BLOCKS_SUFFIX, e)
        return dequantize_mxfp4(blocks, ckpt.get_row(name + SCALES_SUFFIX, e))

    gate_up, down = weight("gate_up_proj"), weight("down_proj")
    gate_up_bias = ckpt.get_row(f"{prefix}.gate_up_proj_bias", e).float()
    down_bias = ckpt.get_row(f"{prefix}.down_proj_bias", e).float()
    biases = (gate_up_bias[0::2], gate_up_bias[1::2], down_bias)
    return gate_up[0::2], gate_up[1::2], down, biases
