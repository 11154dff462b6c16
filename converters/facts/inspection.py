"""`inspect(path) -> ModelInfo`: what a model is, from headers only (no weights are read).

A Hugging Face folder is read through its safetensors headers and config.json (what the
config means is the architecture registry's answer), a GGUF file through its header
(converters/facts/gguf_info.py), Itamae's torch format through its manifest. Parameters
and bits per weight are counted per tensor group (converters/facts/tensor_groups.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gguf import MODEL_ARCH

from converters import archs
from converters.archs.spec import LINEAR_ATTENTION, ArchSpec
from converters.archs.tensors import split_layer_name
from converters.core.errors import BadModelFile, ItamaeError
from converters.core.model_info import ModelInfo
from converters.facts.card_metadata import read_card
from converters.facts.gguf_info import inspect_gguf
from converters.facts.tensor_groups import hf_group, summarise_tensors
from converters.formats.detect import source_format
from converters.formats.hf_reader import SCALE_SUFFIX, HFCheckpoint
from converters.formats.mxfp4 import BLOCKS_SUFFIX, SCALES_SUFFIX
from converters.formats.torch_format import MANIFEST, is_torch_format

# bits per stored element of a safetensors dtype (an FP8 weight's block scales are added to it)
SAFETENSORS_BITS = {
    "F64": 64,
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "I8": 8,
    "U8": 8,
    "F8_E8M0": 8,
}


def inspect(path: str | Path) -> ModelInfo:
    path = Path(path)
    fmt = source_format(path)
    if fmt == "gguf":
        return inspect_gguf(path)
    if path.is_dir():  # hf, torch, or a folder whose missing config.json inspect_hf names
        return inspect_hf(path)
    if not path.exists():
        raise ItamaeError(f"{path} does not exist.", "Give a model folder or a .gguf file.")
    raise ItamaeError(
        f"{path} is neither a model folder (no config.json) nor a GGUF file.",
        "Give a Hugging Face model folder (config.json + *.safetensors) or a .gguf file.",
    )


def inspect_hf(folder: Path) -> ModelInfo:
    if is_torch_format(folder):
        return _inspect_torch_format(folder)
    ckpt = HFCheckpoint(folder)
    config = ckpt.config
    info = _from_config(folder, "hf", config)
    n_layers = info.n_layers
    tensors = []
    for name in ckpt.tensor_names():
        bid, _ = split_layer_name(name)
        if (bid is not None and bid >= n_layers) or name.startswith("mtp."):
            continue  # DeepSeek's multi-token-prediction layers do not run in chat
        if name.endswith(".scale") and name.removesuffix(".scale") + ".weight" in ckpt:
            continue  # DeepSeek-V4's FP4 / FP8 scales, counted with their weight
        if _mxfp4_part(ckpt, name) == SCALES_SUFFIX:
            continue  # counted with its blocks
        dtype, n = ckpt.dtype_name(name), math.prod(ckpt.shape(name))
        stored = n * SAFETENSORS_BITS.get(dtype, 16) // 8
        if _mxfp4_part(ckpt, name) == BLOCKS_SUFFIX:  # two 4-bit values a byte, + block scales
            scales = name.removesuffix(BLOCKS_SUFFIX) + SCALES_SUFFIX
            dtype, n, stored = "MXFP4", 2 * n, stored + math.prod(ckpt.shape(scales))
        if _fp4_part(ckpt, name) == "codes":  # DeepSeek-V4's experts: two codes a byte
            scale = name.removesuffix(".weight") + ".scale"
            dtype, n, stored = "FP4", 2 * n, stored + math.prod(ckpt.shape(scale))
        elif (scale := name.removesuffix(".weight") + ".scale") in ckpt:
            stored += math.prod(ckpt.shape(scale))  # DeepSeek-V4's e8m0 FP8 block scales
        if (scale := name + SCALE_SUFFIX) in ckpt:  # FP8 block scales belong to their weight
            stored += (
                math.prod(ckpt.shape(scale)) * SAFETENSORS_BITS.get(ckpt.dtype_name(scale), 32) // 8
            )
        tensors.append((hf_group(name), n, stored, dtype))
    summarise_tensors(info, tensors)
    info.size_bytes = ckpt.nbytes_on_disk()
    info.files = [f.name for f in ckpt.files]
    quant = config_quant(config)
    info.quant = str(quant or max(info.dtypes, key=info.dtypes.get, default="")).lower()
    return info


def _fp4_part(ckpt, name: str) -> str:
    """ "codes" or "scale" for the two halves of a DeepSeek-V4 FP4 weight (int8 codes, one
    e8m0 `.scale` per 32 values), else ""."""
    stem = name.removesuffix(".weight").removesuffix(".scale")
    weight, scale = stem + ".weight", stem + ".scale"
    if name not in (weight, scale) or weight not in ckpt or scale not in ckpt:
        return ""
    if ckpt.dtype_name(weight) != "I8" or ckpt.dtype_name(scale) != "F8_E8M0":
        return ""
    return "codes" if name == weight else "scale"


def _mxfp4_part(ckpt, name: str) -> str:
    """BLOCKS_SUFFIX or SCALES_SUFFIX for the two halves of an MXFP4 weight, else ""."""
    for suffix, other in ((BLOCKS_SUFFIX, SCALES_SUFFIX), (SCALES_SUFFIX, BLOCKS_SUFFIX)):
        if name.endswith(suffix) and name.removesuffix(suffix) + other in ckpt:
            return suffix
    return ""


# llama.cpp's LLAMA_MAX_LAYERS (src/llama-hparams.h); more than that is a hostile config
MAX_LAYERS = 512
CONFIG_VALUE_ERRORS = (TypeError, ValueError, OverflowError, AttributeError, KeyError, IndexError,
                       ZeroDivisionError)  # fmt: skip


def _from_config(folder: Path, fmt: str, config: dict) -> ModelInfo:
    """ModelInfo from config.json; a value of the wrong type or size is a BadModelFile
    (config.json comes from the model's publisher, not from transformers)."""
    try:
        return _info_from_config(folder, fmt, config)
    except CONFIG_VALUE_ERRORS as e:
        raise BadModelFile(
            f"{folder / 'config.json'} holds a malformed value ({type(e).__name__}: {e}).",
            "Re-download the model's config.json.",
        ) from e


# The common field names, for describing a family the registry does not know.
GENERIC = ArchSpec("", MODEL_ARCH.LLAMA, {}, "", {}, lambda config: [])  # gguf_arch unused


def config_quant(config: dict) -> str:
    quant = config.get("quantization_config") or {}
    return str(quant.get("quant_method") or "") if isinstance(quant, dict) else ""


def _info_from_config(folder: Path, fmt: str, config: dict) -> ModelInfo:
    config = archs.normalise_config(config)
    n_layers = int(config.get("num_hidden_layers") or 0)
    if not 0 <= n_layers <= MAX_LAYERS:  # checked before any per-layer loop runs
        raise ValueError(f"num_hidden_layers is {n_layers}, not 0 to {MAX_LAYERS}")
    # A family the registry does not know is still described, with the common field names.
    spec = archs.find(str(config.get("model_type", ""))) or GENERIC
    card = read_card(folder)
    info = ModelInfo(
        path=folder,
        format=fmt,
        arch=str(config.get("model_type", "")),
        name=card.name or folder.name,
        n_layers=n_layers,
        n_experts=spec.n_experts(config),
        experts_per_token=spec.experts_per_token(config),
        n_shared_experts=spec.n_shared_experts(config),
        context_length=int(config.get("max_position_embeddings") or 0),
        vocab_size=int(config.get("vocab_size") or 0),
        license=card.license,
    )
    info.n_moe_layers = sum(spec.is_moe_layer(config, b) for b in range(n_layers))
    info.n_linear_attention_layers = spec.layer_types(config).count(LINEAR_ATTENTION)
    info.extra = spec.extra_facts(config)
    return info


def _inspect_torch_format(folder: Path) -> ModelInfo:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    info = _from_config(folder, "torch", config)
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    info.files = [str(f.relative_to(folder)) for f in files]
    info.size_bytes = sum(f.stat().st_size for f in files)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    n_layers = info.n_layers
    tensors = []
    for name, entry in manifest.get("tensors", {}).items():
        bid, _ = split_layer_name(name)
        if bid is None or bid < n_layers:
            n = math.prod(entry["shape"])
            # int8 rows as stored; "float" tensors counted as bf16 (their scales not counted)
            bits = 8 if entry.get("scheme", "").startswith("int8") else 16
            tensors.append((hf_group(name), n, n * bits // 8, entry.get("scheme", "")))
    for layer in manifest.get("expert_layers", {}).values():
        n = layer["n_experts"] * 3 * layer["hidden"] * layer["intermediate"]
        tensors.append(("experts", n, layer["n_experts"] * layer["bytes_per_expert"], "experts"))
    summarise_tensors(info, tensors)
    info.quant = str(manifest.get("recipe", ""))
    return info
