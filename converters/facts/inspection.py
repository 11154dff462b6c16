"""`inspect(path) -> ModelInfo`: what a model is, from headers only (no weights are read).

A Hugging Face folder is read through its safetensors headers and config.json; a GGUF
file through gguf-py's `GGUFReader` (memory-mapped: only the header is touched). Bits per
weight are reported per tensor group, the groups an MoE recipe treats differently:
routed experts, shared experts, attention, embeddings (token embedding and output head)
and the rest (norms, routers including the shared expert's gate, dense FFNs). Active parameters per token count the routed
experts `experts_per_token / n_experts` times and everything else once.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from converters.archs.metadata import expert_count
from converters.archs.spec import split_layer_name
from converters.facts.card_metadata import read_card
from converters.core.errors import BadModelFile, ItamaeError
from converters.formats.detect import source_format
from converters.formats.gguf_writer import RECIPE_KEY
from converters.core.model_info import ModelInfo

GROUPS = ("experts", "shared", "attention", "embeddings", "other")
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
}


def inspect(path: str | Path) -> ModelInfo:
    path = Path(path)
    if source_format(path) == "gguf":
        return inspect_gguf(path)
    if path.is_dir():
        return inspect_hf(path)
    if not path.exists():
        raise ItamaeError(f"{path} does not exist.", "Give a model folder or a .gguf file.")
    raise ItamaeError(
        f"{path} is neither a model folder nor a .gguf file.",
        "Give a Hugging Face model folder (config.json + *.safetensors) or a .gguf file.",
    )


def hf_group(name: str) -> str:
    _, rest = split_layer_name(name)
    if re.search(r"(^|\.)experts\.\d+\.", rest) or re.search(
        r"\.experts\.(gate_up|down)_proj", rest
    ):
        return "experts"
    if "shared_expert" in rest and "shared_expert_gate" not in rest:
        return "shared"
    if "self_attn." in rest or "attention." in rest:
        return "attention"
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return "embeddings"
    return "other"


def gguf_group(name: str) -> str:
    if "gate_inp" in name:
        return "other"  # routers (ffn_gate_inp, ffn_gate_inp_shexp) are not experts
    if "_exps." in name:
        return "experts"
    if "_shexp." in name:
        return "shared"
    if ".attn_" in name:
        return "attention"
    if name.startswith(("token_embd.", "output.")):
        return "embeddings"
    return "other"


def _summarise(info: ModelInfo, tensors: list[tuple[str, int, int, str]]) -> None:
    """tensors: (group, elements, stored bytes, type name) -> params, bpw, dtypes."""
    elements, stored = Counter(), Counter()
    for group, n, nbytes, _ in tensors:
        elements[group] += n
        stored[group] += nbytes
    info.total_params = sum(elements.values())
    routed = elements["experts"]
    share = info.experts_per_token / info.n_experts if info.n_experts else 1.0
    info.active_params = info.total_params - routed + round(routed * share)
    info.dtypes = dict(Counter(t for *_, t in tensors))
    info.bits_per_weight = {g: round(8 * stored[g] / elements[g], 3) for g in GROUPS if elements[g]}


def inspect_hf(folder: Path) -> ModelInfo:
    from converters.formats.hf_reader import SCALE_SUFFIX, HFCheckpoint
    from converters.formats.torch_format import is_torch_format

    if is_torch_format(folder):
        return _inspect_torch_format(folder)
    ckpt = HFCheckpoint(folder)
    config = ckpt.config
    info = _from_config(folder, "hf", config)
    n_layers = info.n_layers
    tensors = []
    for name in ckpt.tensor_names():
        bid, _ = split_layer_name(name)
        if bid is not None and bid >= n_layers:
            continue  # DeepSeek's multi-token-prediction layers do not run in chat
        dtype, n = ckpt.dtype_name(name), math.prod(ckpt.shape(name))
        stored = n * SAFETENSORS_BITS.get(dtype, 16) // 8
        if (scale := name + SCALE_SUFFIX) in ckpt:  # FP8 block scales belong to their weight
            stored += (
                math.prod(ckpt.shape(scale)) * SAFETENSORS_BITS.get(ckpt.dtype_name(scale), 32) // 8
            )
        tensors.append((hf_group(name), n, stored, dtype))
    _summarise(info, tensors)
    info.size_bytes = ckpt.nbytes_on_disk()
    info.files = [f.name for f in ckpt.files]
    quant = config_quant(config)
    info.quant = str(quant or max(info.dtypes, key=info.dtypes.get, default="")).lower()
    return info


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


def config_quant(config: dict) -> str:
    quant = config.get("quantization_config") or {}
    return str(quant.get("quant_method") or "") if isinstance(quant, dict) else ""


def _info_from_config(folder: Path, fmt: str, config: dict) -> ModelInfo:
    n_layers = int(config.get("num_hidden_layers") or 0)
    if not 0 <= n_layers <= MAX_LAYERS:  # checked before any per-layer loop runs
        raise ValueError(f"num_hidden_layers is {n_layers}, not 0 to {MAX_LAYERS}")
    n_experts = expert_count(config)
    card = read_card(folder)
    info = ModelInfo(
        path=folder,
        format=fmt,
        arch=str(config.get("model_type", "")),
        name=card.name or folder.name,
        n_layers=n_layers,
        n_experts=n_experts,
        experts_per_token=int(config.get("num_experts_per_tok") or 0) if n_experts else 0,
        n_shared_experts=_shared_experts(config),
        context_length=int(config.get("max_position_embeddings") or 0),
        vocab_size=int(config.get("vocab_size") or 0),
        license=card.license,
    )
    if n_experts:
        from converters.archs.spec import ARCHS

        spec = ARCHS.get(info.arch)
        info.n_moe_layers = (
            sum(spec.is_moe_layer(config, b) for b in range(n_layers)) if spec else n_layers
        )
    return info


def _shared_experts(config: dict) -> int:
    if config.get("n_shared_experts"):
        return int(config["n_shared_experts"])
    return 1 if config.get("shared_expert_intermediate_size") else 0


def _inspect_torch_format(folder: Path) -> ModelInfo:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    info = _from_config(folder, "torch", config)
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    info.files = [str(f.relative_to(folder)) for f in files]
    info.size_bytes = sum(f.stat().st_size for f in files)
    from converters.formats.torch_format import MANIFEST

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
    _summarise(info, tensors)
    info.quant = str(manifest.get("recipe", ""))
    return info


# GGUF architecture names -> HF model_type (llama.cpp runs Mixtral as "llama" with experts).
GGUF_ARCH_TO_HF = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "olmoe": "olmoe"}


def inspect_gguf(path: Path) -> ModelInfo:
    # Not gguf-py's GGUFReader: it trusts the header's counts (an array claiming 2**63
    # items makes it loop and allocate for minutes) and turns every vocabulary entry into
    # a numpy view (5-70 s for a 150k vocabulary). The header reader checks every count
    # and length against the file (BadModelFile otherwise) and skips long arrays.
    from converters.formats.gguf_header import read_contents

    contents = read_contents(path)
    try:
        return _gguf_info(path, contents)
    except (TypeError, ValueError, OverflowError, AttributeError, IndexError, KeyError) as e:
        # a key of the wrong type or an impossible value: hostile or damaged metadata
        raise BadModelFile(
            f"{path.name} has malformed GGUF metadata ({e}).", "Re-download or re-convert it."
        ) from e


def _gguf_info(path: Path, contents) -> ModelInfo:
    def field(key: str, default=None):
        return contents.metadata.get(key, default)

    arch = str(field("general.architecture", ""))
    n_experts = int(field(f"{arch}.expert_count", 0) or 0)
    info = ModelInfo(
        path=path,
        format="gguf",
        arch=_hf_arch(arch, n_experts, field(f"{arch}.expert_gating_func")),
        name=str(field("general.name", path.stem)),
        n_layers=int(field(f"{arch}.block_count", 0) or 0),
        n_experts=n_experts,
        experts_per_token=int(field(f"{arch}.expert_used_count", 0) or 0),
        n_shared_experts=int(field(f"{arch}.expert_shared_count", 0) or 0),
        context_length=int(field(f"{arch}.context_length", 0) or 0),
        vocab_size=int(
            field(f"{arch}.vocab_size", 0) or contents.array_lengths.get("tokenizer.ggml.tokens", 0)
        ),
        license=str(field("general.license", "")),
        size_bytes=path.stat().st_size,
        files=[path.name],
    )
    if info.n_shared_experts == 0 and any(
        t.name.endswith("ffn_up_shexp.weight") for t in contents.tensors
    ):
        info.n_shared_experts = 1  # Qwen-MoE: one shared expert, no count key
    tensors = [
        (gguf_group(t.name), int(t.n_elements), int(t.n_bytes), t.type.name)
        for t in contents.tensors
    ]
    _summarise(info, tensors)
    info.n_moe_layers = sum(t.name.endswith("ffn_gate_inp.weight") for t in contents.tensors)
    file_type = field("general.file_type")
    info.quant = str(field(RECIPE_KEY) or _file_type_name(file_type))
    info.extra = {"gguf_arch": arch, "file_type": file_type}
    return info


def _hf_arch(arch: str, n_experts: int, gating) -> str:
    if arch == "llama":
        return "mixtral" if n_experts else "llama"
    if arch == "deepseek2":
        return "deepseek_v3" if gating == 2 else "deepseek_v2"  # 2: sigmoid gating (V3/R1)
    return GGUF_ARCH_TO_HF.get(arch, arch)


def _file_type_name(file_type) -> str:
    import gguf

    try:
        return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        return ""
