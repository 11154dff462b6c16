"""Itamae's torch format: what the native torch engine memory-maps.

A folder with the source's `config.json` and tokenizer files, a JSON manifest
(`itamae_torch.json`: format version, recipe, the scheme of every tensor) and safetensors
files. Each MoE layer's routed experts sit in their own file as one uint8 tensor
`[n_experts, bytes_per_expert]`: row e holds everything expert e needs (its fused gate/up
projection, its down projection, their scales) at 64-byte aligned offsets, so an expert is
one contiguous slice that can be paged in, copied to a GPU or evicted on its own (gpt-oss's
experts add float32 biases to the row; its MXFP4 is dequantized exactly on the way in). The rest
of the model is in `model.safetensors`.

Quantization schemes: int8_row (int8, one scale per output row) and int4_group (nibble-packed
codes with a float16 scale and zero per group of inputs); the maths and the reasons
for it are in converters/formats/torch_quant.py.
Recipes: "bf16" (everything bf16), "int8" (experts int8, other linears int8), "int4"
(experts, the output layer and attention's q/k/v/o int4 in groups of 64, other linears
int8; those layers are stored as `NAME.weight.q/.scale/.zero` with the experts' maths; each
tensor's scheme is in the manifest, so files written before attention was int4 read as
they are). Embeddings, norms, routers and MLA's kv_b_proj (it is
folded into attention at run time) stay float.

This module is the layout and the read side; converters/formats/torch_writer.py writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from converters import archs
from converters.core.errors import BadModelFile
from converters.formats.torch_quant import (
    int4_group_size,
    quantize_int4_groups,
    quantize_int8_rows,
)

FORMAT = "itamae-torch"
FORMAT_VERSION = 1
MANIFEST = "itamae_torch.json"
EXPERT_SCHEMES = ("bf16", "int8", "int4")  # the recipes' names for them: conversion/recipes.py
ALIGN = 64  # bytes: every part of an expert row starts on a cache line, views stay aligned
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "README.md",
    "LICENSE",
)
DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "I8": torch.int8,
    "U8": torch.uint8,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# How the known families spell one routed expert's weight (the architecture registry's
# tables): per expert, `model.layers.{bid}.{block}.experts.{e}.{proj}.weight`, and
# transformers 5's fused `experts.gate_up_proj` [E, 2I, H] / `experts.down_proj` [E, H, I].
EXPERT_RE, FUSED_RE, PROJ = archs.expert_tensor_names()
MXFP4_RE = archs.packed_expert_tensor_name()  # gpt-oss: experts.{proj}_{blocks,scales,bias}


# ---- the expert row layout ---------------------------------------------------------------


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


# ---- reading ------------------------------------------------------------------------------


def is_torch_format(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


class TorchFormat:
    """Read side: non-expert tensors on request, expert rows memory-mapped."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.manifest = json.loads((self.folder / MANIFEST).read_text())
            config = json.loads((self.folder / "config.json").read_text())
            self.config = archs.normalise_config(config)
        except (OSError, json.JSONDecodeError) as e:
            raise BadModelFile(f"{self.folder} is not a readable torch-format model ({e}).",
                               "Convert the model again with `itamae convert --format torch`.") from e  # fmt: skip
        if (
            self.manifest.get("format") != FORMAT
            or self.manifest.get("format_version") != FORMAT_VERSION
        ):
            raise BadModelFile(
                f"{self.folder} holds torch format version {self.manifest.get('format_version')!r}, "
                f"this Itamae reads version {FORMAT_VERSION}.",
                "Convert the model again with this version of Itamae.",
            )
        self._rest = safe_open(self.folder / "model.safetensors", "pt")
        self._rows: dict[int, torch.Tensor] = {}

    @property
    def recipe(self) -> str:
        return self.manifest["recipe"]

    def scheme(self, name: str) -> str | None:
        entry = self.manifest["tensors"].get(name)
        return entry["scheme"] if entry else None

    def has(self, name: str) -> bool:
        return name in self.manifest["tensors"]

    def get(self, name: str) -> torch.Tensor:
        return self._rest.get_tensor(name)

    def expert_layers(self) -> list[int]:
        return sorted(int(k) for k in self.manifest["expert_layers"])

    def expert_layout(self, layer: int) -> tuple[dict, int]:
        entry = self.manifest["expert_layers"][str(layer)]
        parts = {k: (o, DTYPES[d], tuple(s)) for k, (o, d, s) in entry["parts"].items()}
        return parts, entry["bytes_per_expert"]

    def expert_rows(self, layer: int) -> torch.Tensor:
        """uint8 [n_experts, bytes_per_expert], memory-mapped: pages load when touched."""
        if layer not in self._rows:
            entry = self.manifest["expert_layers"][str(layer)]
            path = self.folder / entry["file"]
            header_len = int.from_bytes(path.open("rb").read(8), "little")
            shape = (entry["n_experts"], entry["bytes_per_expert"])
            expected = 8 + header_len + shape[0] * shape[1]
            if path.stat().st_size != expected:
                raise BadModelFile(f"{path.name} is {path.stat().st_size} bytes, expected {expected}.",
                                   "The file is truncated: convert the model again.")  # fmt: skip
            # copy-on-write mapping: never written, shared with the page cache
            array = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + header_len, shape=shape)
            self._rows[layer] = torch.from_numpy(array)
        return self._rows[layer]
