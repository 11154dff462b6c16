"""Where non-expert weights come from: a Hugging Face folder or the torch format.

Both hand out tensors by their hub names (`model.layers.0.self_attn.q_proj.weight`), so the
model files never see which format they were loaded from. Non-expert weights are copied
into the compute dtype on the compute device; experts are left to the slow tier
(experts.py) and the expert cache (placement.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from converters.core.errors import BadModelFile
from converters.formats.e8m0_scales import ScaledCheckpoint
from converters.formats.mxfp4 import BLOCKS_SUFFIX, SCALES_SUFFIX
from converters.formats.torch_format import EXPERT_RE, FUSED_RE, TorchFormat, is_torch_format
from converters.formats.torch_quant import (
    dequantize_int4_groups,
    dequantize_int8_rows,
    int4_group_size,
)

from .experts import CheckpointExperts, MappedExperts, SlowTier
from .layers import Int4Linear, Int8Linear, Linear

PACKED_EXPERT_SUFFIXES = (BLOCKS_SUFFIX, SCALES_SUFFIX, "_bias")


class Weights:
    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, device
        self.config: dict = {}
        self.expert_quant: str | None = None  # hub checkpoints: quantize experts as they load

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def _read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if not self.has(name):
            raise BadModelFile(
                f"The model has no tensor {name!r}.",
                "The checkpoint is incomplete or not the architecture its config.json names.",
            )
        return self._read(name).to(device=self.device, dtype=dtype or self.dtype)

    def maybe(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        return self.get(name, dtype) if self.has(name) else None

    def linear(self, prefix: str) -> Linear:
        return Linear(self.get(f"{prefix}.weight"), self.maybe(f"{prefix}.bias"))

    def slow_tier(self, prefixes: list[str], names: tuple[str, str, str], act: str) -> SlowTier:
        raise NotImplementedError

    def rest_param_count(self, n_layers: int) -> int:
        """Parameters outside the routed experts (MTP layers beyond n_layers left out)."""
        raise NotImplementedError


class CheckpointWeights(Weights):
    def __init__(self, folder: Path, dtype, device):
        super().__init__(dtype, device)
        self.ckpt = ScaledCheckpoint(folder)  # DeepSeek-V4's e8m0-scaled FP8 / FP4 too
        self.config = self.ckpt.config

    def has(self, name: str) -> bool:
        return name in self.ckpt

    def _read(self, name: str) -> torch.Tensor:
        return self.ckpt.get(name)

    def slow_tier(self, prefixes, names, act) -> SlowTier:
        fused = next(
            (
                f
                for f in (f"{prefixes[0]}.down_proj", f"{prefixes[0]}.down_proj_blocks")
                if f in self.ckpt
            ),
            None,
        )
        if fused:
            n = self.ckpt.shape(fused)[0]
        else:
            n = 1 + max(
                int(name[len(prefixes[0]) + 1 :].split(".")[0])
                for name in self.ckpt.tensor_names()
                if name.startswith(prefixes[0] + ".")
            )
        scheme = {None: "float", "int8": "int8_row", "int4": "int4_group"}[self.expert_quant]
        return CheckpointExperts(self.ckpt, prefixes, names, n, self.dtype, act, scheme)

    def rest_param_count(self, n_layers: int) -> int:
        total = 0
        for name in self.ckpt.tensor_names():
            m = re.match(r"^model\.layers\.(\d+)\.", name)
            if EXPERT_RE.match(name) or FUSED_RE.match(name) or (m and int(m.group(1)) >= n_layers):
                continue
            if ".experts." in name and name.endswith(PACKED_EXPERT_SUFFIXES):
                continue  # MXFP4 experts and their biases
            total += math.prod(self.ckpt.shape(name))
        return total


class TorchFormatWeights(Weights):
    def __init__(self, folder: Path, dtype, device):
        super().__init__(dtype, device)
        self.fmt = TorchFormat(folder)
        self.config = self.fmt.config

    def has(self, name: str) -> bool:
        return self.fmt.has(name)

    def _read(self, name: str) -> torch.Tensor:
        return self.fmt.get(name)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        scheme = self.fmt.scheme(name)
        if scheme == "int8_row":
            q, s = self.fmt.get(name + ".q"), self.fmt.get(name + ".scale")
            return dequantize_int8_rows(q, s).to(device=self.device, dtype=dtype or self.dtype)
        if scheme == "int4_group":
            q, s, z = (self.fmt.get(f"{name}.{part}") for part in ("q", "scale", "zero"))
            w = dequantize_int4_groups(q, s, z)
            return w.to(device=self.device, dtype=dtype or self.dtype)
        return super().get(name, dtype)

    def linear(self, prefix: str) -> Linear:
        name = f"{prefix}.weight"
        if self.fmt.scheme(name) == "int8_row":
            q = self.fmt.get(name + ".q").to(self.device)
            scale = self.fmt.get(name + ".scale").to(self.device)
            linear = Int8Linear(q, scale, self.maybe(f"{prefix}.bias"))
            # bf16 decode reads the stored rows (int8_kernel.py: the kernel built now rather
            # than on the first token) or, without VNNI, FBGEMM's packed copy made now; with
            # neither, the weight gets a fresh, aligned buffer for torch's kernels.
            if self.dtype != torch.bfloat16 or not linear.prepare_kernel():
                linear.weight = q.clone()
            return linear
        if self.fmt.scheme(name) == "int4_group":  # the int4 recipe's head and attention
            q, s, z = (
                self.fmt.get(f"{name}.{part}").to(self.device) for part in ("q", "scale", "zero")
            )
            linear = Int4Linear(
                q, s, z, int4_group_size(q.shape[1] * 2), self.maybe(f"{prefix}.bias")
            )
            if self.dtype == torch.bfloat16:
                linear.decode_kernel_applies()  # the kernel built at load, not on a token
            return linear
        return super().linear(prefix)

    def slow_tier(self, prefixes, names, act) -> SlowTier:
        layers = [int(p.split(".")[2]) for p in prefixes]
        missing = [i for i in layers if str(i) not in self.fmt.manifest["expert_layers"]]
        if missing:
            raise BadModelFile(f"The torch-format model has no experts for layers {missing}.",
                               "Convert the model again.")  # fmt: skip
        return MappedExperts(self.fmt, layers, act)

    def rest_param_count(self, n_layers: int) -> int:
        return sum(math.prod(t["shape"]) for t in self.fmt.manifest["tensors"].values())


def open_weights(folder: str | Path, dtype: torch.dtype, device: torch.device) -> Weights:
    folder = Path(folder)
    if is_torch_format(folder):
        return TorchFormatWeights(folder, dtype, device)
    return CheckpointWeights(folder, dtype, device)
