"""ModelInfo from a GGUF header: the one builder, for `inspect` and the llama.cpp backend.

The header comes from converters.formats.gguf_header (metadata and the tensor table, every
shard of a split model; no weights and no vocabulary are read). Not gguf-py's GGUFReader:
it trusts the header's counts (an array claiming 2**63 items makes it loop and allocate
for minutes) and turns every vocabulary entry into a numpy view (5-70 s for a 150k
vocabulary); the header reader checks every count and length against the file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import gguf

from converters import archs
from converters.conversion.fallbacks import read_record
from converters.core.errors import BadModelFile
from converters.core.model_info import ModelInfo
from converters.facts.tensor_groups import gguf_group, summarise_tensors
from converters.formats.gguf_header import SplitContents, read_split_contents
from converters.formats.gguf_writer import RECIPE_KEY

METADATA_ERRORS = (TypeError, ValueError, OverflowError, AttributeError, IndexError, KeyError)


def inspect_gguf(path: str | Path) -> ModelInfo:
    return gguf_model_info(read_split_contents(path))


def gguf_model_info(split: SplitContents) -> ModelInfo:
    try:
        return _gguf_info(split)
    except METADATA_ERRORS as e:
        # a key of the wrong type or an impossible value: hostile or damaged metadata
        raise BadModelFile(
            f"{split.path.name} has malformed GGUF metadata ({e}).", "Re-download or re-convert it."
        ) from e


def _gguf_info(split: SplitContents) -> ModelInfo:
    contents, path = split.contents, split.path
    metadata = contents.metadata
    arch = str(metadata.get("general.architecture", ""))

    def field(key: str, default=0):
        return metadata.get(f"{arch}.{key}", default) or default

    # llama.cpp counts next-token-prediction blocks (GLM's nextn) in block_count; they do
    # not run in chat, so layers and parameters are the trunk's, as for a HF folder
    n_layers = int(field("block_count")) - int(field("nextn_predict_layers"))
    info = ModelInfo(
        path=path,
        format="gguf",
        arch=archs.family_from_gguf(metadata),
        name=str(metadata.get("general.name", path.stem)),
        n_layers=n_layers,
        n_experts=int(field("expert_count")),
        experts_per_token=int(field("expert_used_count")),
        n_shared_experts=int(field("expert_shared_count")),
        context_length=int(field("context_length")),
        vocab_size=int(
            field("vocab_size") or contents.array_lengths.get("tokenizer.ggml.tokens", 0)
        ),
        license=str(metadata.get("general.license", "")),
        size_bytes=sum(p.stat().st_size for p in split.files),
        files=[p.name for p in split.files],
    )
    tensors = [t for t in contents.tensors if _block(t.name) < n_layers]
    if info.n_shared_experts == 0 and any(t.name.endswith("ffn_up_shexp.weight") for t in tensors):
        info.n_shared_experts = 1  # Qwen-MoE: one shared expert, no count key
    groups = [(gguf_group(t.name), int(t.n_elements), int(t.n_bytes), t.type.name) for t in tensors]
    summarise_tensors(info, groups)
    info.n_moe_layers = sum(t.name.endswith("ffn_gate_inp.weight") for t in tensors)
    # a layer with state-space / linear-attention tensors keeps a recurrent state
    info.n_linear_attention_layers = len(
        {t.name.split(".")[1] for t in tensors if t.name.startswith("blk.") and ".ssm_" in t.name}
    )
    file_type = metadata.get("general.file_type")
    info.quant = str(metadata.get(RECIPE_KEY) or quant_name(file_type, tensors))
    info.extra = {"gguf_arch": arch, "file_type": file_type}
    if (spec := archs.find(info.arch)) is not None:
        info.extra.update(spec.gguf_extra_facts(metadata))  # DeepSeek-V4's attention kinds
    if (fallbacks := read_record(metadata)) is not None:  # written by Itamae's converter
        info.extra["quant_fallbacks"] = fallbacks
    return info


def _block(name: str) -> int:
    """blk.{N}.* -> N; -1 for tensors outside the blocks."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blk" and parts[1].isdigit() else -1


def quant_name(file_type, tensors) -> str:
    """llama.cpp's file type name (Q8_0, Q4_K_M, ...), else the type holding the most bytes."""
    try:
        return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        stored = Counter()
        for t in tensors:
            stored[t.type.name] += int(t.n_bytes)
        return max(stored, key=stored.get) if stored else ""
