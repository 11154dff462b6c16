"""Weights with power-of-two e8m0 scales, as DeepSeek publishes V4 (Flash, Pro).

Beside each quantized `<stem>.weight` lies a `<stem>.scale` of dtype float8_e8m0fnu, one
biased exponent per block (2 ** (byte - 127)):
- FP8 (e4m3) projections: one scale per 128x128 block (`quantization_config`'s
  `weight_block_size`), edge blocks partial, as DeepSeek-V3's `_scale_inv` but spelled
  `.scale` and stored as an exponent;
- FP4 (e2m1) routed experts (`expert_dtype: fp4`): an int8 tensor holding two codes a byte,
  element 2i in the low nibble (the MXFP4 code order of converters/formats/mxfp4.py), one
  scale per 32 inputs.
Both dequantize exactly to float32: every code times a power of two is a float32.

`ScaledCheckpoint` reads such a folder as HFCheckpoint does, with `get` returning those
weights dequantized; other tensors (and other checkpoints) read as HFCheckpoint reads them.
References: DeepSeek-V4's inference code (`weight_dequant`, `fp4` experts); transformers'
integrations/finegrained_fp8.py; llama.cpp's conversion/deepseek.py (`DeepseekV4Model`).
"""

from __future__ import annotations

import torch

from converters.core.errors import BadModelFile
from converters.formats.hf_reader import HFCheckpoint, dequantize_fp8_blocks
from converters.formats.mxfp4 import BLOCK, BLOCK_BYTES, dequantize_mxfp4

E8M0, FP8_E4M3, FP4_PACKED = "F8_E8M0", "F8_E4M3", "I8"
E8M0_BIAS = 127


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """float8_e8m0fnu (or its uint8 bytes) -> float32 powers of two, exactly."""
    exponents = scale.view(torch.uint8).to(torch.int32) - E8M0_BIAS
    return torch.ldexp(torch.ones_like(exponents, dtype=torch.float32), exponents)


def dequantize_fp4_groups(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 [rows, cols / 2] codes and e8m0 [rows, cols / 32] -> float32 [rows, cols]."""
    rows, half = packed.shape
    groups = half * 2 // BLOCK
    if tuple(scale.shape) != (rows, groups):
        raise BadModelFile(
            f"FP4 scale has shape {tuple(scale.shape)} but a {rows}x{half * 2} weight in "
            f"groups of {BLOCK} needs {(rows, groups)}.",
            "The checkpoint is damaged: re-download it.",
        )
    blocks = packed.view(torch.uint8).reshape(rows, groups, BLOCK_BYTES)
    return dequantize_mxfp4(blocks, scale.view(torch.uint8))


class ScaledCheckpoint(HFCheckpoint):
    """HFCheckpoint whose `get` folds e8m0 `.scale` tensors into their weights."""

    def scale_of(self, name: str) -> str | None:
        """The `.scale` tensor of weight `name`, if it has one in e8m0."""
        if not name.endswith(".weight"):
            return None
        scale = name.removesuffix(".weight") + ".scale"
        return scale if scale in self and self.dtype_name(scale) == E8M0 else None

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        scale_name = self.scale_of(name) if name in self else None
        if scale_name is None:
            return super().get(name, dtype)
        weight, scale = self._raw(name), self._raw(scale_name)
        stored = self.dtype_name(name)
        if stored == FP8_E4M3:
            values = dequantize_fp8_blocks(weight, e8m0_to_float(scale), self.fp8_block)
        elif stored == FP4_PACKED:
            values = dequantize_fp4_groups(weight, scale)
        else:
            raise BadModelFile(
                f"{name!r} is stored as {stored} beside an e8m0 scale; only FP8 (e4m3) and "
                "packed FP4 weights carry one.",
                "The checkpoint is damaged or not one DeepSeek published: re-download it.",
            )
        return values.to(dtype) if dtype is not None else values
