"""The compiled decode step's opaque operators (compiled_step.py): kernels Inductor should
call, not generate.

- `itamae::int8_linear`: FBGEMM's int8 product (cpu_kernels.py) for x [1, in] float32, found
  by the weight's address (a packed FBGEMM weight is no tensor a graph can take).
- `itamae::routed_experts`: an MoE block's one-token path (expert cache placement, misses,
  usage counts), the block found by a handle tensor so that one graph serves every layer.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from .cpu_kernels import _reduce_range

_LINEARS: dict[int, weakref.ref] = {}  # int8 weight's data_ptr -> its Int8Linear (FBGEMM copy)
_BLOCKS: list[weakref.ref] = []  # MoE blocks by handle

_lib = torch.library.Library("itamae", "FRAGMENT")
_lib.define("int8_linear(Tensor x, Tensor qweight, Tensor scale, bool fbgemm) -> Tensor")
_lib.define("routed_experts(Tensor x, Tensor weights, Tensor experts, Tensor block) -> Tensor")


def _int8_linear(x, qweight, scale, fbgemm: bool):
    """x [1, in] float32 -> [1, out] float32 with the very kernel Int8Linear runs for it."""
    ref = _LINEARS.get(qweight.data_ptr())
    linear = ref() if ref is not None else None
    if fbgemm and linear is not None and linear._packed is not None:
        return torch.ops.quantized.linear_dynamic(x, linear._packed, _reduce_range())
    if fbgemm and qweight.data_ptr() % 64 == 0:  # bf16, no FBGEMM: the weight-only kernel
        return torch._weight_int8pack_mm(x.bfloat16(), qweight, scale.bfloat16()).float()
    return F.linear(x, qweight.float()) * scale  # float32 model: dequantize, as eager does


def _routed_experts(x, weights, experts, block):
    """x [1, H] float32 -> [1, H] float32: the block's own one-token path, in float32 where
    the compiled expert kernel runs it (as the in-graph gather does), else in its dtype."""
    moe = _BLOCKS[int(block)]()
    fused = moe.fused is not None and moe.fused.failed is None and not moe.weight_input
    return moe._one_token(x if fused else x.to(moe.dtype), weights[0], experts[0]).float()


_lib.impl("int8_linear", _int8_linear, "CPU")
_lib.impl("routed_experts", _routed_experts, "CPU")


@torch.library.register_fake("itamae::int8_linear")
def _int8_linear_fake(x, qweight, scale, fbgemm):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.register_fake("itamae::routed_experts")
def _routed_experts_fake(x, weights, experts, block):
    return torch.empty_like(x)
