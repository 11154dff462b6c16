"""Read what the memory planner and ModelInfo need from a GGUF header, without its weights.

The header comes from converters.formats.gguf_header.read_split_contents (the metadata and
tensor table of every shard; checked against gguf's GGUFReader in the tests). Tensor sizes are the stored sizes (quantized
blocks included); which tensors are routed experts follows llama.cpp's own pattern for
`--cpu-moe` (common/common.h, LLM_FFN_EXPS_REGEX).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from converters import archs
from converters.core.errors import BadModelFile
from converters.core.model_info import ModelInfo
from converters.facts.gguf_info import gguf_model_info, quant_name
from converters.formats.gguf_header import (
    GGUFContents,
    SplitContents,
    TensorEntry,
    read_split_contents,
)
from engine.llamacpp.model_layout import BlockWeights, ModelLayout

EXPERT_TENSOR = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")
BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.")
OUTPUT_TENSORS = ("output.", "output_norm.")
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS (src/llama-hparams.h): it loads no more


@dataclass
class GGUFHeader:
    split: SplitContents  # metadata of the first shard, tensors of every shard
    layout: ModelLayout
    n_vocab: int

    @property
    def path(self) -> Path:
        return self.split.path

    @property
    def metadata(self) -> dict:  # scalar and small-array fields; vocabularies left out
        return self.split.contents.metadata

    @property
    def tensors(self) -> list[TensorEntry]:
        return self.split.contents.tensors

    @property
    def arch(self) -> str:
        return self.metadata.get("general.architecture", "")

    @property
    def files(self) -> list[Path]:
        return self.split.files

    def key(self, name: str, default=None):
        """An architecture key such as "block_count" (`{arch}.block_count`)."""
        return self.metadata.get(f"{self.arch}.{name}", default)

    def model_info(self) -> ModelInfo:
        """What `itamae inspect` reports, from this header."""
        return gguf_model_info(self.split)


def _per_block(value, n_layers: int) -> list[int]:
    """Keys that llama.cpp accepts either as one number or as one number per block."""
    if isinstance(value, list):
        return [int(v) for v in value[:n_layers]] + [0] * max(0, n_layers - len(value))
    return [int(value or 0)] * n_layers


def read_gguf(path: str | Path) -> GGUFHeader:
    """The header of a GGUF file; for a split model (any shard given), of all its shards,
    with `path` set to the first shard, the one llama.cpp loads."""
    split = read_split_contents(path)
    path, contents = split.path, split.contents
    arch = contents.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise BadModelFile(f"{path.name} has no general.architecture key.", "Convert it again.")
    n_vocab = contents.array_lengths.get("tokenizer.ggml.tokens", 0)
    try:
        layout = _layout(contents, arch, n_vocab)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:  # e.g. int(inf)
        raise BadModelFile(
            f"{path.name} has malformed {arch} hyperparameters ({e}).", "Convert it again."
        ) from e
    return GGUFHeader(split, layout, n_vocab)


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
    for tensor in contents.tensors:
        size, params, name = tensor.n_bytes, tensor.n_elements, tensor.name
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
    recurrent = key("attention.recurrent_layers", None)
    # Nemotron-H names no recurrent layers: llama.cpp takes those with neither KV heads nor
    # an FFN, its Mamba-2 layers, the blocks with a conv1d here
    recurrent = list(recurrent) if isinstance(recurrent, list) else _conv_blocks(contents)
    recurrent = [bool(r) for r in (recurrent + [False] * n_layers)[:n_layers]]
    kv_heads = [0 if r else h for h, r in zip(kv_heads, recurrent, strict=False)]
    # next-token-prediction blocks (GLM's nextn) are loaded but get no KV cache in a chat
    trunk = n_layers - int(key("nextn_predict_layers", 0) or 0)
    # Gemma 4's last shared_kv_layers blocks read an earlier block's cache (llama.cpp's
    # n_layer_kv_from_start) and keep none of their own
    trunk -= int(key("attention.shared_kv_layers", 0) or 0)
    kv_heads = [h if b < trunk else 0 for b, h in enumerate(kv_heads)]
    # Gemma 4 runs a dense MLP beside the experts in every block (not a "shexp" tensor)
    beside = any(t.name.endswith(".ffn_up.weight") for t in contents.tensors) and any(
        EXPERT_TENSOR.search(t.name) for t in contents.tensors
    )
    pattern = key("attention.sliding_window_pattern", None)
    swa_blocks = [bool(p) for p in pattern] if isinstance(pattern, list) else []
    n_head = max(heads) if heads else 0
    head_dim = n_embd // n_head if n_head else 0
    n_experts = int(key("expert_count", 0) or 0)
    experts_used = int(key("expert_used_count", 0) or 0)
    ffn = max(_per_block(key("feed_forward_length", 0), n_layers) or [0])
    expert_ffn = int(key("expert_feed_forward_length", 0) or 0) * experts_used
    return ModelLayout(
        name=str(metadata.get("general.name", "")),
        arch=arch,
        quant=quant_name(metadata.get("general.file_type"), contents.tensors),
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
        swa_blocks=swa_blocks,
        key_length_swa=int(key("attention.key_length_swa", 0) or 0),
        value_length_swa=int(key("attention.value_length_swa", 0) or 0),
        indexer_key_length=int(key("attention.indexer.key_length", 0) or 0),
        n_experts=n_experts,
        experts_per_token=experts_used,
        ffn_width=max(ffn, expert_ffn),
        # Mixtral and OLMoE GGUFs give the experts' width as feed_forward_length
        expert_ffn=int(key("expert_feed_forward_length", 0) or 0) or (ffn if n_experts else 0),
        shared_ffn=_shared_ffn(key, contents.tensors),
        ffn_beside_experts=ffn if beside and all(b.expert_bytes for b in blocks) else 0,
        # gpt-oss, Gemma 4, Llama 4: llama_kv_cache_iswa, one mask for the windowed
        # layers, one for the rest
        n_masks=2 if _attention_window(metadata, key) else 1,
        conv_channels=_conv_channels(key),
        ssm_in_width=_ssm_in_width(contents.tensors),
        ssm_inner=int(key("ssm.inner_size", 0) or 0),
        state_bytes=[
            _recurrent_state_bytes(key) if r else _compressor_state_bytes(key, bid)
            for bid, r in enumerate(recurrent)
        ],
        compress_ratios=_per_block(key("attention.compress_ratios", 0), n_layers),
        k_only=f"{arch}.attention.compress_ratios" in metadata,  # DeepSeek-V4's raw cache
        indexer_heads=int(key("attention.indexer.head_count", 0) or 0),
    )


def _conv_blocks(contents: GGUFContents) -> list[bool]:
    convs = {int(m.group(1)) for t in contents.tensors
             if ".ssm_conv1d." in t.name and (m := BLOCK_TENSOR.match(t.name))}  # fmt: skip
    return [b in convs for b in range(max(convs) + 1)] if convs else []


def _attention_window(metadata: dict, key) -> int:
    """The sliding window (or chunk) llama.cpp runs the model with: the GGUF's key, else
    what its loader sets for the family by itself (0 in the key: no window)."""
    window = key("attention.sliding_window", None)
    if window is None:
        spec = archs.find(archs.family_from_gguf(metadata))
        window = spec.llamacpp_default_window if spec else 0
    return int(window or 0)


def _compressor_state_bytes(key, bid: int) -> int:
    """DeepSeek-V4's compressor state of one layer (llama_dsv4_comp_state: F32 kv and score
    rows of the window being compressed): ratio 4 keeps two windows of 2 x key_length rows,
    and its indexer's compressor two of 2 x indexer key_length; ratio 128 one window of
    key_length. 0 for a layer without compression."""
    ratios = key("attention.compress_ratios", None)
    ratio = int(ratios[bid]) if isinstance(ratios, list) and bid < len(ratios) else 0
    head, indexer = (
        int(key("attention.key_length", 0) or 0),
        int(key("attention.indexer.key_length", 0) or 0),
    )
    if ratio == 4:
        return 2 * 4 * (2 * ratio) * 2 * (head + indexer)
    return 2 * 4 * ratio * head if ratio else 0


def _shared_ffn(key, tensors) -> int:
    """Qwen names the shared expert's width; DeepSeek counts experts of the routed width;
    Llama 4 names neither: the width of its shared expert's tensor."""
    width = int(key("expert_shared_feed_forward_length", 0) or 0)
    count = int(key("expert_shared_count", 0) or 0)
    if width or count:
        return width or count * int(key("expert_feed_forward_length", 0) or 0)
    up = next((t for t in tensors if t.name.endswith(".ffn_up_shexp.weight")), None)
    return int(up.shape[1]) if up is not None and len(up.shape) == 2 else 0


def _ssm_in_width(tensors) -> int:
    """Mamba-2's input projection width (z, x, B, C and dt in one: 2 x inner + 2 x groups x
    state + heads); 0 for a model without one (Gated DeltaNet projects apart)."""
    proj = next((t for t in tensors if t.name.endswith(".ssm_in.weight")), None)
    return int(proj.shape[1]) if proj is not None and len(proj.shape) == 2 else 0


def _conv_channels(key) -> int:
    inner, state = int(key("ssm.inner_size", 0) or 0), int(key("ssm.state_size", 0) or 0)
    return inner + 2 * int(key("ssm.group_count", 0) or 0) * state if inner else 0


def _recurrent_state_bytes(key) -> int:
    """llama.cpp's F32 conv + recurrent state of one layer (n_embd_r + n_embd_s)."""
    conv, inner = int(key("ssm.conv_kernel", 0) or 0), int(key("ssm.inner_size", 0) or 0)
    state, groups = int(key("ssm.state_size", 0) or 0), int(key("ssm.group_count", 0) or 0)
    return 4 * (max(conv - 1, 0) * (inner + 2 * groups * state) + state * inner)


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
