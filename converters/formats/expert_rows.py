"""One routed expert as one contiguous row of bytes: the torch format's expert layout.

Every expert, whatever its scheme, is a uint8 row holding its fused gate/up projection
(gate rows, then up rows), its down projection, their scales (int8_row, int4_group) and,
for families whose experts have them (gpt-oss), float32 biases, each part at a 64-byte
aligned offset. Moving an expert between tiers is one copy; the engine's compute objects
are typed views into the row (`expert_views`). The quantization maths is in
converters/formats/torch_quant.py.
"""

from __future__ import annotations

import numpy as np
import torch

from converters.formats.torch_quant import (
    int4_group_size,
    quantize_int4_groups,
    quantize_int8_rows,
)

ALIGN = 64  # bytes: every part of an expert row starts on a cache line, views stay aligned


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def expert_parts(scheme: str, hidden: int, inter: int, float_dtype: torch.dtype = torch.bfloat16):
    """[(part, dtype, shape)] of one expert row. gate_up is gate rows then up rows."""
    if scheme == "float":
        return [
            ("gate_up", float_dtype, (2 * inter, hidden)),
            ("down", float_dtype, (hidden, inter)),
        ]
    if scheme == "int8_row":
        return [
            ("gate_up.q", torch.int8, (2 * inter, hidden)),
            ("gate_up.scale", torch.float32, (2 * inter,)),
            ("down.q", torch.int8, (hidden, inter)),
            ("down.scale", torch.float32, (hidden,)),
        ]
    if scheme == "int4_group":
        gh, gi = int4_group_size(hidden), int4_group_size(inter)
        return [
            ("gate_up.q", torch.uint8, (2 * inter, hidden // 2)),
            ("gate_up.scale", torch.float16, (2 * inter, hidden // gh)),
            ("gate_up.zero", torch.float16, (2 * inter, hidden // gh)),
            ("down.q", torch.uint8, (hidden, inter // 2)),
            ("down.scale", torch.float16, (hidden, inter // gi)),
            ("down.zero", torch.float16, (hidden, inter // gi)),
        ]
    raise ValueError(f"unknown expert scheme {scheme!r}")


BIAS_PARTS = (("gate_up.bias", 2), ("down.bias", 0))  # part, rows (x inter; 0: hidden)


def expert_layout(
    scheme: str, hidden: int, inter: int, float_dtype=torch.bfloat16, biases: bool = False
):
    """({part: (offset, dtype, shape)}, bytes per expert row, a multiple of ALIGN).
    `biases`: float32 gate_up/down biases follow the weights (gpt-oss's experts have them)."""
    layout, offset = {}, 0
    parts = expert_parts(scheme, hidden, inter, float_dtype)
    if biases:
        parts += [(n, torch.float32, (k * inter or hidden,)) for n, k in BIAS_PARTS]
    for name, dtype, shape in parts:
        layout[name] = (offset, dtype, shape)
        offset = _align(offset + int(np.prod(shape)) * dtype.itemsize)
    return layout, offset


def pack_expert(
    scheme: str, gate, up, down, float_dtype=torch.bfloat16, biases=None
) -> torch.Tensor:
    """One expert's weights (and its (gate, up, down) biases, if any) -> its uint8 row."""
    inter, hidden = gate.shape
    layout, nbytes = expert_layout(scheme, hidden, inter, float_dtype, biases is not None)
    gate_up = torch.cat([gate, up], dim=0)
    if scheme == "float":
        values = {"gate_up": gate_up.to(float_dtype), "down": down.to(float_dtype)}
    elif scheme == "int8_row":
        (q1, s1), (q2, s2) = quantize_int8_rows(gate_up), quantize_int8_rows(down)
        values = {"gate_up.q": q1, "gate_up.scale": s1, "down.q": q2, "down.scale": s2}
    else:
        q1, s1, z1 = quantize_int4_groups(gate_up, int4_group_size(hidden))
        q2, s2, z2 = quantize_int4_groups(down, int4_group_size(inter))
        values = {
            "gate_up.q": q1, "gate_up.scale": s1, "gate_up.zero": z1,
            "down.q": q2, "down.scale": s2, "down.zero": z2,
        }  # fmt: skip
    if biases is not None:
        values["gate_up.bias"] = torch.cat([biases[0], biases[1]]).float()
        values["down.bias"] = biases[2].float()
    row = torch.zeros(nbytes, dtype=torch.uint8)
    for name, (offset, dtype, _shape) in layout.items():
        data = values[name].to(dtype).contiguous().view(torch.uint8).flatten()
        row[offset : offset + data.numel()] = data
    return row


def expert_views(row: torch.Tensor, layout: dict) -> dict[str, torch.Tensor]:
    """Typed views into one expert row (no copy)."""
    views = {}
    for name, (offset, dtype, shape) in layout.items():
        n = int(np.prod(shape)) * dtype.itemsize
        views[name] = row[offset : offset + n].view(dtype).view(shape)
    return views
