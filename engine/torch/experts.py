"""Routed experts as rows of bytes, and where those rows come from (the slow tier).

Every expert, whatever its scheme, is one contiguous uint8 row (layout in
converters/torch_format.py): moving it between tiers is one copy, and the compute-side
objects (`ExpertFFN`) are typed views into whichever copy is used. Slow tiers:
- `MappedExperts`: the torch format's memory-mapped expert files (zero-copy views; the OS
  pages them in), so a model larger than RAM still runs.
- `CheckpointExperts`: a Hugging Face folder, read expert by expert through HFCheckpoint
  (FP8 and MXFP4 dequantized) and packed into a row in the compute dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from converters.formats.hf_reader import HFCheckpoint
from converters.formats.mxfp4 import BLOCKS_SUFFIX, mxfp4_expert
from converters.formats.torch_format import (
    FUSED_RE,
    TorchFormat,
    expert_layout,
    expert_views,
    pack_expert,
)
from converters.formats.torch_quant import int4_group_size

from .layers import Int4Linear, Int8Linear, Linear, gated_activation


def stacked_views(rows: torch.Tensor, layout: dict) -> dict[str, torch.Tensor]:
    """Typed views [N, *shape] of every part of N expert rows (uint8 [N, row bytes]), no copy.

    Parts start on 64-byte boundaries and rows are a multiple of 64 bytes long, so each
    part of every row reinterprets in place as its dtype with a fixed row stride."""
    n = rows.shape[0]
    views = {}
    for name, (offset, dtype, shape) in layout.items():
        size = int(np.prod(shape)) * dtype.itemsize
        views[name] = rows[:, offset : offset + size].view(dtype).view(n, *shape)
    return views


class ExpertFFN:
    """down(act(gate(x)) * up(x)) for one expert, over typed views of its row.

    T = tokens routed to this expert, H = hidden, I = expert intermediate size.
    """

    def __init__(self, row: torch.Tensor, layout: dict, scheme: str, act: str = "silu"):
        self.row = row  # keeps the storage the views point into alive
        v = expert_views(row, layout)
        if scheme == "float":
            self.gate_up, self.down = Linear(v["gate_up"]), Linear(v["down"])
        elif scheme == "int8_row":
            self.gate_up = Int8Linear(v["gate_up.q"], v["gate_up.scale"])
            self.down = Int8Linear(v["down.q"], v["down.scale"])
        else:
            hidden = v["down.q"].shape[0]
            inter = v["gate_up.q"].shape[0] // 2
            self.gate_up = Int4Linear(
                v["gate_up.q"], v["gate_up.scale"], v["gate_up.zero"], int4_group_size(hidden)
            )
            self.down = Int4Linear(
                v["down.q"], v["down.scale"], v["down.zero"], int4_group_size(inter)
            )
        self.glu = gated_activation(act)
        # per-expert biases (gpt-oss), float32, added after the matmuls whatever the scheme
        self.gate_up_bias, self.down_bias = v.get("gate_up.bias"), v.get("down.bias")

    def prepare(self, dtype: torch.dtype) -> None:
        """Repack int4 weights for the CPU kernel ahead of the first token (bf16 on CPU only)."""
        if self.row.device.type == "cpu" and dtype == torch.bfloat16:
            for linear in (self.gate_up, self.down):
                if isinstance(linear, Int4Linear):
                    linear.prepare_kernel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)  # x [T, H] -> [T, 2I]
        if self.gate_up_bias is not None:
            gate_up = gate_up + self.gate_up_bias.to(gate_up.dtype)
        gate, up = gate_up.chunk(2, dim=-1)  # 2 x [T, I]
        out = self.down(self.glu(gate, up))  # [T, H]
        return out if self.down_bias is None else out + self.down_bias.to(out.dtype)


class SlowTier:
    """Where every expert lives permanently. Rows are indexed by (moe_layer, expert)."""

    scheme: str
    act: str = "silu"

    def row(self, layer: int, expert: int) -> torch.Tensor:
        raise NotImplementedError

    def layout(self, layer: int) -> tuple[dict, int]:
        raise NotImplementedError

    def n_experts(self, layer: int) -> int:
        raise NotImplementedError

    def is_view(self) -> bool:
        """True if `row` returns a view of storage (so using it elsewhere needs a copy)."""
        return True

    def ffn(self, layer: int, row: torch.Tensor) -> ExpertFFN:
        return ExpertFFN(row, self.layout(layer)[0], self.scheme, self.act)

    def stacked(self, layer: int, experts: list[int]) -> tuple[dict, torch.Tensor]:
        """(typed [N, ...] views, row index per expert) to compute `experts` where they live."""
        rows = torch.stack([self.row(layer, e) for e in experts])
        return stacked_views(rows, self.layout(layer)[0]), torch.arange(len(experts))


class MappedExperts(SlowTier):
    def __init__(self, fmt: TorchFormat, layers: list[int], act: str = "silu"):
        self.fmt, self.layers, self.act = fmt, layers, act
        self.scheme = fmt.manifest["expert_scheme"]
        self._layouts = {i: fmt.expert_layout(hf) for i, hf in enumerate(layers)}
        self._views: dict[int, dict] = {}

    def row(self, layer: int, expert: int) -> torch.Tensor:
        return self.fmt.expert_rows(self.layers[layer])[expert]

    def layout(self, layer: int):
        return self._layouts[layer]

    def n_experts(self, layer: int) -> int:
        return self.fmt.expert_rows(self.layers[layer]).shape[0]

    def stacked(self, layer: int, experts: list[int]) -> tuple[dict, torch.Tensor]:
        # zero-copy: views over the whole memory-mapped file, indexed by expert
        if layer not in self._views:
            self._views[layer] = stacked_views(self.fmt.expert_rows(self.layers[layer]),
                                               self._layouts[layer][0])  # fmt: skip
        return self._views[layer], torch.tensor(experts)


class CheckpointExperts(SlowTier):
    """Experts read from a hub checkpoint on demand: in the compute dtype ("float"), or
    quantized as they are read ("int8_row", "int4_group")."""

    def __init__(self, ckpt: HFCheckpoint, prefixes: list[str], names: tuple[str, str, str],
                 n_experts: int, dtype: torch.dtype, act: str = "silu", scheme: str = "float"):  # fmt: skip
        self.ckpt, self.prefixes, self.names = ckpt, prefixes, names
        self.dtype, self.act, self._n, self.scheme = dtype, act, n_experts, scheme
        gate, *_, biases = self._weights(0, 0)
        self._layout = expert_layout(
            scheme, gate.shape[1], gate.shape[0], dtype, biases=biases is not None
        )

    def _weights(self, layer: int, e: int):
        """(gate, up, down, biases or None) of one expert."""
        prefix = self.prefixes[layer]
        if f"{prefix}.gate_up_proj{BLOCKS_SUFFIX}" in self.ckpt:
            return mxfp4_expert(self.ckpt, prefix, e)
        return (*self._float_weights(prefix, e), None)

    def _float_weights(self, prefix: str, e: int):
        fused = f"{prefix}.gate_up_proj"
        if fused in self.ckpt and FUSED_RE.match(fused):
            gate_up = self.ckpt.get_row(fused, e)  # one expert's slice, not the stack
            inter = gate_up.shape[0] // 2
            return gate_up[:inter], gate_up[inter:], self.ckpt.get_row(f"{prefix}.down_proj", e)
        return tuple(self.ckpt.get(f"{prefix}.{e}.{n}.weight") for n in self.names)

    def row(self, layer: int, expert: int) -> torch.Tensor:
        gate, up, down, biases = self._weights(layer, expert)
        return pack_expert(self.scheme, gate, up, down, float_dtype=self.dtype, biases=biases)

    def layout(self, layer: int):
        return self._layout

    def n_experts(self, layer: int) -> int:
        return self._n

    def is_view(self) -> bool:
        return False


def expert_flops(ffn_row_layout: dict, n_tokens: int) -> float:
    """Multiply-adds x 2 for `n_tokens` through one expert (for the cost model)."""
    gu = ffn_row_layout.get("gate_up", ffn_row_layout.get("gate_up.q"))[2]
    dn = ffn_row_layout.get("down", ffn_row_layout.get("down.q"))[2]
    params = gu[0] * gu[1] + dn[0] * dn[1]
    if "gate_up.q" in ffn_row_layout and ffn_row_layout["gate_up.q"][1] == torch.uint8:
        params *= 2  # int4: two codes per byte
    return 2.0 * params * n_tokens
