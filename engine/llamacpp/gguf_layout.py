"""Read what the memory planner and ModelInfo need from a GGUF header, without its weights.

The header comes from converters.formats.gguf_header.read_contents (the metadata and tensor table; checked
against gguf's GGUFReader in the tests). Tensor sizes are the stored sizes (quantized
blocks included); which tensors are routed experts follows llama.cpp's own pattern for
`--cpu-moe` (common/common.h, LLM_FFN_EXPS_REGEX).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf

from converters.core.errors import BadModelFile
from converters.core.model_info import ModelInfo
from converters.facts.inspection import gguf_group
from converters.formats.gguf_header import GGUFContents, TensorEntry, read_contents
from converters.formats.gguf_writer import RECIPE_KEY

from .model_layout import BlockWeights, ModelLayout

# llama.cpp's split files (llama_split_path, gguf-split): the first shard holds the metadata
SHARD_NAME = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
EXPERT_TENSOR = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")
BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.")
OUTPUT_TENSORS = ("output.", "output_norm.")
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS (src/llama-hparams.h): it loads no more

# GGUF architecture name -> Hugging Face model_type (what ModelInfo.arch spells).
# llama.cpp writes Mixtral as "llama" with experts, DeepSeek-V2 and V3 both as "deepseek2".
GGUF_TO_HF_ARCH = {
    "qwen2moe": "qwen2_moe",  # Qwen1.5-MoE, Qwen2-57B-A14B
    "qwen3moe": "qwen3_moe",  # Qwen3-30B-A3B, Qwen3-235B-A22B
    "olmoe": "olmoe",  # OLMoE-1B-7B
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}


@dataclass
class GGUFHeader:
    path: Path
    metadata: dict  # scalar and small-array fields; vocabularies left out
    layout: ModelLayout
    n_vocab: int
    tensors: list[TensorEntry]

    @property
    def arch(self) -> str:
        return self.metadata.get("general.architecture", "")

    @property
    def files(self) -> list[Path]:
        count = self.metadata.get("split.count", 1)
        return (
            shard_paths(self.path, count) if isinstance(count, int) and count > 1 else [self.path]
        )

    def key(self, name: str, default=None):
        """An architecture key such as "block_count" (`{arch}.block_count`)."""
        return self.metadata.get(f"{self.arch}.{name}", default)

    def model_info(self) -> ModelInfo:
        """What `itamae inspect` reports, from this header (same groups as converters.facts.inspection)."""
        layout, tensors = self.layout, self.tensors
        elements, stored = Counter(), Counter()
        for t in tensors:
            elements[gguf_group(t.name)] += t.n_elements
            stored[gguf_group(t.name)] += t.n_bytes
        total, routed = sum(elements.values()), elements["experts"]
        share = layout.experts_per_token / layout.n_experts if layout.n_experts else 1.0
        shared = int(self.key("expert_shared_count", 0) or 0)
        if not shared and any(t.name.endswith("ffn_up_shexp.weight") for t in tensors):
            shared = 1  # Qwen-MoE: one shared expert, no count key
        return ModelInfo(
            path=self.path,
            format="gguf",
            arch=hf_arch(self.arch, self.metadata),
            name=str(self.metadata.get("general.name", self.path.stem)),
            total_params=total,
            active_params=total - routed + round(routed * share),
            n_layers=layout.n_layers,
            n_experts=layout.n_experts,
            experts_per_token=layout.experts_per_token,
            n_shared_experts=shared,
            n_moe_layers=sum(t.name.endswith("ffn_gate_inp.weight") for t in tensors),
            context_length=layout.context_length,
            vocab_size=self.n_vocab,
            dtypes=dict(Counter(t.type.name for t in tensors)),
            quant=str(self.metadata.get(RECIPE_KEY) or layout.quant),
            bits_per_weight={g: round(8 * stored[g] / n, 3) for g, n in elements.items() if n},
            size_bytes=sum(p.stat().st_size for p in self.files),
            license=str(self.metadata.get("general.license", "")),
            files=[p.name for p in self.files],
            extra={"gguf_arch": self.arch, "file_type": self.metadata.get("general.file_type")},
        )


def hf_arch(gguf_arch: str, metadata: dict) -> str:
    experts = metadata.get(f"{gguf_arch}.expert_count", 0) or 0
    if gguf_arch == "llama":
        return "mixtral" if experts else "llama"
    if gguf_arch == "deepseek2":
        # gating func 2 = sigmoid (gguf.ExpertGatingFuncType): V3 and R1 route with sigmoid
        sigmoid = metadata.get("deepseek2.expert_gating_func") == 2
        return "deepseek_v3" if sigmoid else "deepseek_v2"
    return GGUF_TO_HF_ARCH.get(gguf_arch, gguf_arch)


def _per_block(value, n_layers: int) -> list[int]:
    """Keys that llama.cpp accepts either as one number or as one number per block."""
    if isinstance(value, list):
        return [int(v) for v in value[:n_layers]] + [0] * max(0, n_layers - len(value))
    return [int(value or 0)] * n_layers


def _quant_name(metadata: dict, bytes_by_type: dict[str, int]) -> str:
    file_type = metadata.get("general.file_type")
    try:
        return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return max(bytes_by_type, key=bytes_by_type.get) if bytes_by_type else "unknown"


def shard_paths(path: Path, count: int) -> list[Path]:
    """All shards of a split GGUF, first (the one llama.cpp loads) first."""
    match = SHARD_NAME.match(path.name)
    if not match or int(match["count"]) != count:
        raise BadModelFile(
            f"{path.name} is one of {count} parts of a split GGUF, but its name does not say "
            "which (llama.cpp expects NAME-00001-of-0000N.gguf).",
            "Keep the shards' original names.",
        )
    shards = [
        path.with_name(f"{match['prefix']}-{i:05d}-of-{count:05d}.gguf")
        for i in range(1, count + 1)
    ]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise BadModelFile(
            f"The split model {shards[0].name} is missing {', '.join(missing)}.",
            "Download every part into the same folder.",
        )
    return shards


def read_gguf(path: str | Path) -> GGUFHeader:
    """The header of a GGUF file; for a split model (any shard given), of all its shards,
    with `path` set to the first shard, the one llama.cpp loads."""
    path = Path(path)
    contents = read_contents(path)
    count = contents.metadata.get("split.count", 1)
    if isinstance(count, int) and count > 1:
        shards = shard_paths(path, count)
        if path != shards[0]:
            path, contents = shards[0], read_contents(shards[0])
        for shard in shards[1:]:
            contents.tensors.extend(read_contents(shard).tensors)
    metadata = contents.metadata
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise BadModelFile(f"{path.name} has no general.architecture key.", "Convert it again.")
    n_vocab = contents.array_lengths.get("tokenizer.ggml.tokens", 0)
    try:
        layout = _layout(contents, arch, n_vocab)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:  # e.g. int(inf)
        raise BadModelFile(
            f"{path.name} has malformed {arch} hyperparameters ({e}).", "Convert it again."
        ) from e
    return GGUFHeader(path, metadata, layout, n_vocab, contents.tensors)


def read_gguf_layout(path: str | Path) -> ModelLayout:
    return read_gguf(path).layout


def _layout(contents: GGUFContents, arch: str, n_vocab: int) -> ModelLayout:
    metadata = contents.metadata

    def key(name, default=0):
        return metadata.get(f"{arch}.{name}", default)

    n_layers = int(key("block_count"))
    if not 0 <= n_layers <= MAX_LAYERS:  # checked before a list of that many blocks is made
        raise ValueError(f"block_count is {n_layers}, not 0 to {MAX_LAYERS}")
    blocks = [BlockWeights(dense_bytes=0) for _ in range(n_layers)]
    input_bytes = output_bytes = input_params = output_params = 0
    bytes_by_type: dict[str, int] = {}
    for tensor in contents.tensors:
        size, params, name = tensor.n_bytes, tensor.n_elements, tensor.name
        type_name = tensor.type.name
        bytes_by_type[type_name] = bytes_by_type.get(type_name, 0) + size
        block = BLOCK_TENSOR.match(name)
        if block and int(block.group(1)) < n_layers:
            _add_to_block(blocks[int(block.group(1))], name, size, params, len(tensor.shape))
        elif name.startswith(OUTPUT_TENSORS):
            output_bytes, output_params = output_bytes + size, output_params + params
        else:
            input_bytes, input_params = input_bytes + size, input_params + params
    if n_vocab == 0:
        n_vocab = int(key("vocab_size", 0) or 0)

    n_embd = int(key("embedding_length"))
    heads = _per_block(key("attention.head_count"), n_layers)
    kv_heads = _per_block(key("attention.head_count_kv", heads), n_layers)
    n_head = max(heads) if heads else 0
    head_dim = n_embd // n_head if n_head else 0
    n_experts = int(key("expert_count", 0) or 0)
    experts_used = int(key("expert_used_count", 0) or 0)
    ffn = max(_per_block(key("feed_forward_length", 0), n_layers) or [0])
    expert_ffn = int(key("expert_feed_forward_length", 0) or 0) * experts_used
    return ModelLayout(
        name=str(metadata.get("general.name", "")),
        arch=arch,
        quant=_quant_name(metadata, bytes_by_type),
        blocks=blocks,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        input_params=input_params,
        output_params=output_params,
        context_length=int(key("context_length", 4096) or 4096),
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        kv_heads=kv_heads,
        key_length=int(key("attention.key_length", head_dim) or head_dim),
        value_length=int(key("attention.value_length", head_dim) or head_dim),
        mla=f"{arch}.attention.key_length_mla" in metadata,
        n_experts=n_experts,
        experts_per_token=experts_used,
        ffn_width=max(ffn, expert_ffn),
    )


def _add_to_block(block: BlockWeights, name: str, size: int, params: int, n_dims: int) -> None:
    if EXPERT_TENSOR.search(name):
        block.expert_bytes += size
        block.expert_params += params
        return
    block.dense_bytes += size
    block.dense_params += params
    if n_dims < 2:
        block.norm_params += params
        block.norm_bytes += size
