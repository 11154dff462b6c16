"""Weight quantization of the torch format: int8 per output row, int4 group-wise.

The numbers behind `itamae convert --format torch --quant int8|int4`. Where they are stored
(the manifest, one aligned row per expert) is converters/torch_format.py's business; the
engine computes with them through `Int8Linear` and `Int4Linear` (engine/torch/layers.py).
GGUF's block quants (Q8_0, Q4_0, ...) are a separate family, in converters/quant.py.

gpt-fast's int8 weight-only and int4 group-wise quantizers are the model for both schemes;
the int4 code layout is what torch's `_weight_int4pack_mm` kernels take.

- int8_row: q = round(w / s), s = max|w_row| / 127, one float32 scale per output row;
  w ~ q * s. Symmetric, one scale per row: a row is one output's dot product, so the scale
  multiplies the result once ((x @ q.T) * s) and the matmul itself runs on the int8 codes,
  while rows whose ranges differ still each get all 255 levels.
- int4_group: 16 levels are too few to span a whole row, so each group of `group_size`
  consecutive inputs gets its own range: s = (max - min) / 15, q = round((w - min) / s) in
  0..15, zero = min + 8 s; w ~ (q - 8) * s + zero. Scale and zero (asymmetric) because a
  group's values are rarely centred on 0 and a symmetric range would waste levels. Scale
  and zero are stored float16 and the codes are computed against the rounded, stored
  values. Codes are nibble-packed, low nibble first ([out, in/2] uint8).
- Group size: INT4_GROUP (64) where the input size divides by it, so 4 bits + 2 x 16 bits
  per 64 weights = 4.5 bits per weight, as Q4_0; otherwise the largest of 32, 16, 8 that
  divides (a group never straddles two rows), and an error suggesting int8 if none does.
"""

from __future__ import annotations

import torch

from converters.core.errors import ItamaeError

INT4_GROUP = 64  # 4 bits + 2 x 16-bit (scale, zero) / 64 = 4.5 bits per weight, as Q4_0


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (int8 q [out, in], float32 scale [out])."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def int4_group_size(in_features: int) -> int:
    for g in (INT4_GROUP, 32, 16, 8):
        if in_features % g == 0:
            return g
    raise ItamaeError(
        f"An expert input size of {in_features} cannot be split into int4 groups.",
        "Use --quant int8 for this model.",
    )


def quantize_int4_groups(
    w: torch.Tensor, group: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [out, in] -> (packed uint8 [out, in/2], scale f16 [out, in/group], zero f16 [out, in/group])."""
    out_dim, in_dim = w.shape
    g = w.float().view(out_dim, in_dim // group, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).half().float()  # quantize against the stored scale
    zero = (lo + 8 * scale).half().float()
    q = torch.round((g - zero[..., None]) / scale[..., None] + 8).clamp(0, 15).to(torch.uint8)
    q = q.view(out_dim, in_dim)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed.contiguous(), scale.half(), zero.half()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Nibble-packed uint8 [out, in/2] -> int32 codes 0..15 [out, in]."""
    p = packed.to(torch.int32)
    return torch.stack([p & 0xF, p >> 4], dim=-1).view(p.shape[0], -1)


def dequantize_int4_groups(packed, scale, zero) -> torch.Tensor:
    out, n_groups = scale.shape
    q = unpack_int4(packed).view(out, n_groups, -1).float()
    return ((q - 8) * scale.float()[..., None] + zero.float()[..., None]).view(out, -1)
