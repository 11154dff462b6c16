"""Read a Hugging Face checkpoint folder as published on the hub, one tensor at a time.

Handles a single `model.safetensors` or shards listed in `model.safetensors.index.json`,
and FP8 block-scaled weights as DeepSeek-V3/R1 and Qwen3-FP8 publish them: a
`float8_e4m3fn` weight with a float32 `<name>_scale_inv` holding one scale per
`weight_block_size` block (128x128), edge blocks partial. Those are dequantized here
(`weight * scale_inv` per block, on the CPU) so nothing downstream sees FP8. DeepSeek-V4
names the scale `<stem>.scale` beside `<stem>.weight` and stores it as e8m0 (a power of
two); it is read the same way.
Only safetensors is read; pickled `.bin` checkpoints are refused. Each file is opened
once and kept open (3,000 tensors read one by one, as measured for issue 17: 9.3 s
reopening, 0.05 s kept open), and one expert of a fused [E, ...] expert tensor is read as
a slice (`get_row`), not the whole stack (8.7 ms against 0.13 ms for one expert there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from converters import archs
from converters.core.errors import BadModelFile, ItamaeError
from converters.core.json_files import read_model_json

SCALE_SUFFIX = "_scale_inv"
V4_SCALE_SUFFIX = ".scale"  # DeepSeek-V4: `<stem>.scale` beside `<stem>.weight`
FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}


def dequantize_fp8_blocks(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]
) -> torch.Tensor:
    """weight [out, in] (fp8) * scale_inv [ceil(out/bo), ceil(in/bi)] -> float32 [out, in]."""
    out_dim, in_dim = weight.shape
    bo, bi = block
    expected = (-(-out_dim // bo), -(-in_dim // bi))
    if tuple(scale_inv.shape) != expected:
        raise BadModelFile(
            f"FP8 scale has shape {tuple(scale_inv.shape)} but a {out_dim}x{in_dim} weight in "
            f"{bo}x{bi} blocks needs {expected}.",
            "The checkpoint is damaged or its weight_block_size is wrong.",
        )
    scales = (
        scale_inv.float().repeat_interleave(bo, 0)[:out_dim].repeat_interleave(bi, 1)[:, :in_dim]
    )
    return weight.float() * scales


def _load_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ItamaeError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder.",
            "Point at the folder that holds config.json and *.safetensors.",
        )
    config = read_model_json(path)
    if not isinstance(config, dict):
        raise BadModelFile(f"{path} does not hold a JSON object.", "Re-download the model.")
    return config


def _fp8_block(config: dict) -> tuple[int, int]:
    """quantization_config.weight_block_size, checked: it sizes the dequantization."""
    quant = config.get("quantization_config") or {}
    block = quant.get("weight_block_size", (128, 128)) if isinstance(quant, dict) else None
    if (
        not isinstance(block, list | tuple)
        or len(block) != 2
        or not all(type(b) is int and b > 0 for b in block)
    ):
        raise BadModelFile(
            f"config.json's quantization_config.weight_block_size is {block!r}, not two "
            "positive whole numbers.",
            "Re-download the model's config.json.",
        )
    return tuple(block)


def _shard_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError, RecursionError) as e:
            raise BadModelFile(
                f"{index} is not a valid shard index ({e}).", "Re-download it."
            ) from e
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise BadModelFile(
                f"Shards listed in {index.name} are missing: {', '.join(missing[:5])}.",
                "Finish the download (all shards are needed).",
            )
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ItamaeError(
            f"{folder} holds only pickled PyTorch weights (.bin/.pt), which Itamae never loads "
            "because unpickling can run code.",
            "Download the safetensors version of the model.",
        )
    raise BadModelFile(f"{folder} has no *.safetensors weights.", "Finish or redo the download.")


# Where a vision-language release (Kimi-K2.5) keeps its language model's tensors, beside
# the vision tower's; the text model's tensors are read under their names without it.
LANGUAGE_MODEL_PREFIX = "language_model."


class HFCheckpoint:
    """A checkpoint folder; tensors are read lazily (memory-mapped) and one at a time.

    For a release whose config nests the language model in `text_config`, the checkpoint is
    that language model: `language_model.model.layers.0...` reads as `model.layers.0...` and
    the other tensors (vision tower, projector) are left out."""

    def __init__(self, folder: str | Path, keep_files_open: bool = True):
        self.folder = Path(folder)
        # Open handles keep their file memory-mapped, so every page read stays in this
        # process's RSS: the engine keeps them (it reads tensors many times), a conversion,
        # which reads each tensor once, reopens per tensor to keep memory bounded.
        self.keep_files_open = keep_files_open
        self.raw_config = _load_config(self.folder)  # as published, for copying it on
        self.config = archs.normalise_config(self.raw_config)  # as every reader sees it
        self.files = _shard_files(self.folder)
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[str, list[int]]] = {}
        self._stored: dict[str, str] = {}  # the language model's name -> the file's
        self._handles: dict[Path, object] = {}  # file -> open safe_open handle (see _file)
        for file in self.files:
            self._index_file(file)
        if "text_model_type" in self.config and any(
            n.startswith(LANGUAGE_MODEL_PREFIX) for n in self._meta
        ):
            self._keep_language_model()
        self._in_out = self._in_out_experts()
        self.fp8_block = _fp8_block(self.config)

    def _in_out_experts(self) -> frozenset[str]:
        """Fused experts a family stores inputs first ([E, in, out], Llama 4): their shapes
        are given, and their data read, as transformers 5's [E, out, in], so that every
        reader sees one fused layout."""
        spec = archs.find(self.model_type)
        if spec is None or not spec.fused_experts_in_out:
            return frozenset()
        fused = archs.expert_tensor_names()[1]
        names = frozenset(n for n, (_, shape) in self._meta.items()
                          if fused.match(n) and len(shape) == 3)  # fmt: skip
        for name in names:
            dtype, (e, rows, cols) = self._meta[name]
            self._meta[name] = (dtype, [e, cols, rows])
        return names

    def _index_file(self, file: Path) -> None:
        try:
            with safe_open(file, "pt") as f:
                for stored in f.keys():
                    if (name := archs.text_model_name(stored)) is None:
                        continue  # vision tower, MTP head: not the chat model
                    sl = f.get_slice(stored)
                    self._where[name], self._stored[name] = file, stored
                    self._meta[name] = (sl.get_dtype(), list(sl.get_shape()))
        except Exception as e:  # safetensors raises its own SafetensorError and OSError
            raise BadModelFile(
                f"{file.name} is not a readable safetensors file ({e}).",
                "It is truncated or corrupted: re-download it.",
            ) from e

    def _keep_language_model(self) -> None:
        """Read `language_model.*` without the prefix; the vision tower and projector go."""
        kept = [n for n in self._meta if n.startswith(LANGUAGE_MODEL_PREFIX)]
        stored = self._stored
        self._stored = {n.removeprefix(LANGUAGE_MODEL_PREFIX): stored.get(n, n) for n in kept}
        prefixed = {name: LANGUAGE_MODEL_PREFIX + name for name in self._stored}
        self._where = {name: self._where[old] for name, old in prefixed.items()}
        self._meta = {name: self._meta[old] for name, old in prefixed.items()}

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def tensor_names(self) -> list[str]:
        """The language model's tensors, named as a text-only checkpoint spells them
        (archs.text_model_name); FP8 scale tensors are folded into their weights."""
        return [n for n in self._meta if not n.endswith(SCALE_SUFFIX)]

    def __contains__(self, name: str) -> bool:
        return name in self._meta

    def shape(self, name: str) -> list[int]:
        return list(self._meta[name][1])

    def dtype_name(self, name: str) -> str:
        """The stored safetensors dtype string, e.g. "BF16", "F32", "F8_E4M3"."""
        return self._meta[name][0]

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def is_fp8(self, name: str) -> bool:
        return self.dtype_name(name) in FP8_DTYPES

    def _file(self, name: str):
        """The open safetensors handle of the file holding `name`: each file is opened once
        (its header parsed once) and then serves every tensor in it."""
        if name not in self._where:
            raise BadModelFile(
                f"Tensor {name!r} is missing from {self.folder}.",
                "The checkpoint is incomplete or not the architecture its config names.",
            )
        path = self._where[name]
        if not self.keep_files_open:
            return safe_open(path, "pt")
        if path not in self._handles:
            self._handles[path] = safe_open(path, "pt")
        return self._handles[path]

    def _raw(self, name: str, index: int | None = None) -> torch.Tensor:
        """The stored tensor, or only its `index`-th slice along the first dimension."""
        try:
            f, stored = self._file(name), self._stored.get(name, name)
            tensor = f.get_tensor(stored) if index is None else f.get_slice(stored)[index]
            return tensor.transpose(-1, -2).contiguous() if name in self._in_out else tensor
        except BadModelFile:
            raise
        except Exception as e:
            raise BadModelFile(
                f"Could not read tensor {name!r} from {self._where[name].name} ({e}).",
                "The file is truncated or corrupted: re-download it.",
            ) from e

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor; FP8 weights come back dequantized (float32 unless `dtype` says otherwise)."""
        return self._dequantized(name, None, dtype)

    def get_row(self, name: str, index: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """tensor[index] without reading the rest: one expert of a fused [E, ...] layout
        (transformers 5's experts.gate_up_proj / down_proj, gpt-oss)."""
        shape = self.shape(name)
        if not shape or not 0 <= index < shape[0]:
            raise BadModelFile(f"{name!r} has shape {shape}; it has no row {index}.",
                               "The checkpoint does not match its config.json.")  # fmt: skip
        return self._dequantized(name, index, dtype)

    def scale_of(self, name: str) -> str:
        """The block-scale tensor published beside weight `name` ("" if none)."""
        for scale in (name + SCALE_SUFFIX, name.removesuffix(".weight") + V4_SCALE_SUFFIX):
            if scale != name and scale in self._meta:
                return scale
        return ""

    def get_rows(self, name: str, rows: slice, index: int | None = None) -> torch.Tensor:
        """tensor[rows], or tensor[index][rows], without reading the rest: a conversion reads
        a large embedding a few MB at a time, and only the gate (even) rows of a gpt-oss
        expert for ffn_gate_exps. In the stored dtype: not for FP8 weights, whose scales
        cover blocks of rows (use get / get_row)."""
        if self.is_fp8(name):
            raise ValueError(f"{name} is FP8; read it with get() or get_row()")
        if index is None:
            return self._raw(name, rows)
        shape = self.shape(name)
        if not shape or not 0 <= index < shape[0]:
            raise BadModelFile(f"{name!r} has shape {shape}; it has no row {index}.",
                               "The checkpoint does not match its config.json.")  # fmt: skip
        return self._raw(name, (index, rows))

    def _dequantized(self, name: str, index: int | None, dtype) -> torch.Tensor:
        tensor = self._raw(name, index)
        if self.is_fp8(name):
            scale_name = self.scale_of(name) or name + SCALE_SUFFIX
            if scale_name not in self._meta:
                raise BadModelFile(
                    f"FP8 tensor {name!r} has no {scale_name!r} to dequantize it with.",
                    "The checkpoint is incomplete: re-download it.",
                )
            tensor = dequantize_fp8_blocks(tensor, self._raw(scale_name, index), self.fp8_block)
        return tensor.to(dtype) if dtype is not None else tensor

    def iter_tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensor_names():
            yield name, self.get(name, dtype)

    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.files)
