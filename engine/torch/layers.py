"""Building blocks shared by every architecture: RMSNorm, linear layers (float, int8, int4)
and the gated MLP used by dense layers and shared experts.

RMSNorm computes in float32 and casts back, as transformers' `LlamaRMSNorm` does. Quantized
linears use CPU kernels when the activations are bf16: int8 per-row weights through
int8_kernel.py's VNNI kernel for a single activation row (decode; FBGEMM's packed copy,
cpu_kernels.py, where the CPU lacks VNNI) and through `torch._weight_int8pack_mm` otherwise,
int4 group-wise weights through int4_kernel.py's VNNI kernel for a single row (decode) and
`_weight_int4pack_mm_for_cpu` (gpt-fast's kernel) otherwise. The decode kernels and FBGEMM
round the activation row to 8 bits, about what bf16 keeps already; float32 activations ask
for more, so they (and CUDA) run the same math as dequantize-then-matmul, and results agree
across devices to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from converters.formats.torch_quant import dequantize_int4_groups, unpack_int4

from . import int4_kernel, int8_kernel
from .cpu_kernels import int8_kernel_available, int8_matvec, pack_int8

_ZERO = torch.zeros(1, dtype=torch.long)  # the one matrix of an Int4/Int8Linear, by index


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


ACTIVATIONS = {
    "silu": F.silu,
    # gated as relu(gate) * up with gate = up: Nemotron-H's ReLU^2, relu(u)^2 = relu(u) * u
    "relu": F.relu,
    "gelu": F.gelu,
    # Gemma's GELU: transformers' PytorchGELUTanh, the tanh approximation
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
CLAMPED_SWIGLU = "clamped_swiglu:"  # + limit; gpt-oss's expert activation
SWIGLU_ALPHA = 1.702  # its sigmoid gain (transformers' GptOssExperts.alpha)


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """gpt-oss: gate clamped above, up clamped both ways, (up + 1) * gate * sigmoid(1.702 gate)
    (transformers' GptOssExperts._apply_gate; llama.cpp's swiglu_oai)."""
    gate = gate.clamp(max=limit)
    up = up.clamp(-limit, limit)
    return (up + 1) * (gate * torch.sigmoid(gate * SWIGLU_ALPHA))


CLAMPED_SILU = "clamped_silu:"  # + limit; DeepSeek-V4's experts (its `swiglu_limit`)


def clamped_silu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """DeepSeek-V4: silu(gate clamped above) * (up clamped both ways) (transformers'
    DeepseekV4Experts._apply_gate and DeepseekV4MLP)."""
    return F.silu(gate.clamp(max=limit)) * up.clamp(-limit, limit)


def gated_activation(act: str):
    """(gate, up) -> the gated hidden state: act(gate) * up, or a named gated variant."""
    if act.startswith(CLAMPED_SWIGLU):
        limit = float(act.removeprefix(CLAMPED_SWIGLU))
        return lambda gate, up: clamped_swiglu(gate, up, limit)
    if act.startswith(CLAMPED_SILU):
        limit = float(act.removeprefix(CLAMPED_SILU))
        return lambda gate, up: clamped_silu(gate, up, limit)
    fn = ACTIVATIONS[act]
    return lambda gate, up: fn(gate) * up


KERNEL_ALIGN = 64  # bytes; torch's CPU int8pack kernel crashes on weights not 64-byte aligned


def is_aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % KERNEL_ALIGN == 0


class Linear:
    """A float weight [out, in] with an optional bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != x.dtype:  # e.g. bf16 experts of the torch format, fp32 compute
            return F.linear(x, self.weight.to(x.dtype), self.bias)
        return F.linear(x, self.weight, self.bias)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.weight, self.bias) if t is not None]


def causal_conv(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    act: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal depthwise conv of the recurrent mixers (Gated DeltaNet, Mamba-2) over
    [previous K-1 inputs | new]: x [B, T, C], conv_state [B, C, K-1], weight [C, 1, K] ->
    (activated output [B, T, C], the new state: the last K-1 inputs)."""
    seq = torch.cat([conv_state, x.transpose(1, 2)], dim=-1)  # [B, C, K-1+T]
    bias = None if bias is None else bias.to(seq.dtype)
    out = F.conv1d(seq, weight.to(seq.dtype), bias, groups=seq.shape[1])
    return ACTIVATIONS[act](out).transpose(1, 2), seq[..., -(weight.shape[-1] - 1) :]


def fuse_rows(*linears: Linear | None) -> Linear | None:
    """One float Linear whose rows are those of `linears` in order (their outputs side by
    side), so one matmul reads them all; None unless all are plain float weights without
    bias (a quantized weight keeps its own kernel)."""
    if any(type(p) is not Linear or p.bias is not None for p in linears):
        return None
    weights = [p.weight for p in linears]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    return Linear(torch.cat(weights))


class Int8Linear(Linear):
    """int8 weight [out, in] with one scale per output row: w = q * scale[row]."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias=None):
        self.weight = qweight
        self.scale = scale.float()
        self.bias = bias
        self._scale_cache: dict[torch.dtype, torch.Tensor] = {}
        self._packed: torch.ScriptObject | None = None  # FBGEMM's copy, see prepare_kernel
        self._pack_tried = False
        self._vnni: bool | None = None  # decode through int8_kernel.py (decided on first use)

    def _scale(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._scale_cache:
            self._scale_cache[dtype] = self.scale.to(dtype)
        return self._scale_cache[dtype]

    def decode_kernel_applies(self) -> bool:
        """One bf16 row on the CPU can run through int8_kernel.py's VNNI kernel, which reads
        the stored rows as they are (any shape, any alignment)."""
        if self._vnni is None:
            self._vnni = self.weight.device.type == "cpu" and int8_kernel.available()
        return self._vnni

    def prepare_kernel(self) -> bool:
        """Ready the CPU decode kernel (once); False where none applies.

        Called at load for the weights every token reads (attention, dense and shared MLPs,
        the output layer). With int8_kernel.py's VNNI kernel nothing is made: it reads the
        stored rows. Without it, FBGEMM's packed copy is made (as large as the weight).
        Routed experts are not packed: FBGEMM's packing runs at about 0.1 GB/s, so an
        expert cache that moves experts in and out would spend its time packing, and an
        expert computed where it lives would need a packed copy too (the same arithmetic
        wherever an expert is placed is what makes outputs placement-independent). Experts
        run through the VNNI kernel or the weight-only kernels."""
        if self.decode_kernel_applies():
            return True
        if not self._pack_tried:
            self._pack_tried = True
            if self.weight.device.type == "cpu" and int8_kernel_available():
                self._packed = pack_int8(self.weight, self.scale)
        return self._packed is not None

    @property
    def prepared(self) -> bool:
        """prepare_kernel ran and a decode kernel is ready (the VNNI kernel or FBGEMM's copy)."""
        return bool(self._vnni) or self._packed is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cpu_bf16 = x.device.type == "cpu" and x.dtype == torch.bfloat16
        one_row = x.numel() == x.shape[-1]
        if cpu_bf16 and one_row and self.decode_kernel_applies():  # decode, on the stored rows
            y = int8_kernel.matvec(x.reshape(1, -1), self.weight[None], self.scale[None], _ZERO)
            y = y.to(x.dtype).view(*x.shape[:-1], -1)
        elif cpu_bf16 and one_row and self._packed is not None:
            y = int8_matvec(x, self._packed)  # one row: decode, FBGEMM where VNNI is missing
        elif cpu_bf16 and is_aligned(self.weight):
            shape = x.shape
            y = torch._weight_int8pack_mm(
                x.reshape(-1, shape[-1]), self.weight, self._scale(x.dtype)
            )
            y = y.view(*shape[:-1], -1)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self._scale(x.dtype)
        return y if self.bias is None else y + self.bias

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.weight, self.scale, self.bias) if t is not None]


class Int4Linear(Linear):
    """int4 weight in groups along `in`: w = (q - 8) * scale[row, group] + zero[row, group].

    Stored nibble-packed ([out, in/2] uint8, low nibble first). On the CPU with bf16
    activations the weight is repacked once into torch's int4pack layout.
    """

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                 bias: torch.Tensor | None = None):  # fmt: skip
        self.packed, self.scale, self.zero, self.group = packed, scale, zero, group
        self.bias = bias  # Qwen2's q/k/v biases (the int4 recipe stores attention int4)
        self._kernel: tuple[torch.Tensor, torch.Tensor] | None = None
        self._vnni: bool | None = None  # decode through int4_kernel.py (decided on first use)

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int4_groups(self.packed, self.scale, self.zero).to(dtype)

    def prepare_kernel(self) -> bool:
        """Repack for `_weight_int4pack_mm_for_cpu`; False where the kernel does not apply."""
        if self._kernel is None:
            k = self.packed.shape[1] * 2
            if self.group not in (32, 64, 128, 256) or k % self.group:
                return False
            try:
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                    unpack_int4(self.packed), 1
                )
            except (RuntimeError, AttributeError):
                return False
            sz = torch.stack([self.scale, self.zero], dim=-1).transpose(0, 1).contiguous()
            self._kernel = (packed, sz.to(torch.bfloat16))
        return True

    def decode_kernel_applies(self) -> bool:
        """One bf16 row on the CPU can run through int4_kernel.py's VNNI kernel."""
        if self._vnni is None:
            in_features = self.packed.shape[1] * 2
            self._vnni = (
                self.packed.device.type == "cpu"
                and int4_kernel.applies(in_features, self.group)
                and int4_kernel.available()
            )
        return self._vnni

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cpu_bf16 = x.device.type == "cpu" and x.dtype == torch.bfloat16
        if cpu_bf16 and x.numel() == x.shape[-1] and self.decode_kernel_applies():
            y = int4_kernel.matvec(
                x.reshape(1, -1), self.packed[None], self.scale[None], self.zero[None], _ZERO
            )  # one row: decode, read from the stored nibbles
            return self._biased(y.to(x.dtype).view(*x.shape[:-1], -1))
        if cpu_bf16 and self.prepare_kernel():
            packed, sz = self._kernel
            shape = x.shape
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.reshape(-1, shape[-1]), packed, self.group, sz
            )
            return self._biased(y.view(*shape[:-1], -1))
        # dequantized per call (CUDA, float32): memory stays at 4.5 bits per weight
        return F.linear(x, self.dequantize(x.dtype), self.bias)

    def _biased(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.packed, self.scale, self.zero, self.bias) if t is not None]


@dataclass
class GatedMLP:
    """down(act(gate(x)) * up(x)): Llama's MLP, DeepSeek's dense and shared experts."""

    gate: Linear
    up: Linear
    down: Linear
    act: str = "silu"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(gated_activation(self.act)(self.gate(x), self.up(x)))
