"""Synthetic Qwen3-MoE GGUF files for the llama.cpp backend's tests and benchmark.

The weights are random Q8_0 blocks (or F32), written straight into llama.cpp's `qwen3moe`
tensor layout (src/models/qwen3moe.cpp) with the gguf package's streaming writer, so a
~1B-parameter file costs seconds and bounded memory. The vocabulary, merges, pre-tokenizer
and chat template are copied from a real GGUF header: llama.cpp's own
`models/ggml-vocab-qwen2.gguf` (Qwen2's tokenizer and its ChatML template), found in the
llama-cpp-python source distribution.

    write_synthetic_moe(path, hidden=1024, layers=12, experts=32, top_k=4, expert_ffn=768)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

ARCH = "qwen3moe"
Q8_0_BLOCK = 32  # weights per Q8_0 block: one f16 scale + 32 int8 (ggml-common.h)
TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.chat_template",
)
VOCAB_NAME = "ggml-vocab-qwen2.gguf"


def find_vocab_gguf(name: str = VOCAB_NAME) -> Path | None:
    """A real vocab-only GGUF from llama.cpp's models/ (llama-cpp-python sdist), if present."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("ITAMAE_LLAMA_VOCAB_DIR", "")]
    # where the test fixtures unpack the llama-cpp-python sdist, then ad-hoc unpackings
    candidates += [str(p) for p in repo.glob(".itamae-cache/llama-cpp-sdist/*/vendor/*/models")]
    candidates += [str(p) for p in Path("/tmp").glob("llcpp-*/**/models")]
    for folder in candidates:
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def _q8_0_matrix(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """Random Q8_0 rows with weights of about `std`: uint8 [rows, cols/32*34]."""
    blocks = cols // Q8_0_BLOCK
    # uniform int8 in [-127, 127] has std ~73.3, so this scale gives weights of ~std
    scale = np.full((rows, blocks, 1), std / 73.3, dtype=np.float16).view(np.uint8)
    quants = rng.integers(-127, 128, size=(rows, blocks, Q8_0_BLOCK), dtype=np.int8)
    return np.concatenate([scale, quants.view(np.uint8)], axis=2).reshape(rows, blocks * 34)


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], quant: bool):
        self.name, self.shape, self.quant = name, shape, quant  # shape: numpy order

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """numpy shape of the stored bytes (Q8_0: 34 bytes per 32 weights of a row)."""
        if not self.quant:
            return self.shape
        return (*self.shape[:-1], self.shape[-1] // Q8_0_BLOCK * 34)

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape))
        return n // Q8_0_BLOCK * 34 if self.quant else n * 4


def _tensors(hidden, layers, experts, expert_ffn, heads, kv_heads, head_dim, vocab, q8):
    out = [_Tensor("token_embd.weight", (vocab, hidden), q8)]
    for i in range(layers):
        b = f"blk.{i}."
        out += [
            _Tensor(b + "attn_norm.weight", (hidden,), False),
            _Tensor(b + "attn_q.weight", (heads * head_dim, hidden), q8),
            _Tensor(b + "attn_k.weight", (kv_heads * head_dim, hidden), q8),
            _Tensor(b + "attn_v.weight", (kv_heads * head_dim, hidden), q8),
            _Tensor(b + "attn_output.weight", (hidden, heads * head_dim), q8),
            _Tensor(b + "attn_q_norm.weight", (head_dim,), False),
            _Tensor(b + "attn_k_norm.weight", (head_dim,), False),
            _Tensor(b + "ffn_norm.weight", (hidden,), False),
            _Tensor(b + "ffn_gate_inp.weight", (experts, hidden), False),
            _Tensor(b + "ffn_gate_exps.weight", (experts, expert_ffn, hidden), q8),
            _Tensor(b + "ffn_up_exps.weight", (experts, expert_ffn, hidden), q8),
            _Tensor(b + "ffn_down_exps.weight", (experts, hidden, expert_ffn), q8),
        ]
    out += [
        _Tensor("output_norm.weight", (hidden,), False),
        _Tensor("output.weight", (vocab, hidden), q8),
    ]
    return out


def _tensor_data(rng: np.random.Generator, t: _Tensor) -> np.ndarray:
    if len(t.shape) == 1:
        return np.ones(t.shape, dtype=np.float32)  # norms at identity
    std = 1.0 if t.name.startswith("token_embd") else 0.02
    if "ffn_gate_inp" in t.name:
        std = 0.5  # a decisive router, so that expert choice varies with the input
    if not t.quant:
        return (rng.standard_normal(t.shape, dtype=np.float32) * std).astype(np.float32)
    rows, cols = int(np.prod(t.shape[:-1])), t.shape[-1]
    return _q8_0_matrix(rng, rows, cols, std).reshape(t.stored_shape)


def _copy_tokenizer(writer: GGUFWriter, vocab_gguf: Path) -> int:
    reader = GGUFReader(vocab_gguf)
    for key in TOKENIZER_KEYS:
        field = reader.fields.get(key)
        if field is None:
            continue
        value = field.contents()
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, main, sub)
    return len(reader.fields["tokenizer.ggml.tokens"].data)


def write_synthetic_moe(
    path: str | Path,
    *,
    vocab_gguf: str | Path,
    hidden: int = 64,
    layers: int = 2,
    experts: int = 4,
    top_k: int = 2,
    expert_ffn: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    context_length: int = 4096,
    q8_0: bool = True,
    seed: int = 0,
) -> Path:
    """Write a random-weight qwen3moe GGUF; returns the path (written via a temp name)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    head_dim = hidden // heads
    writer = GGUFWriter(tmp, ARCH)
    writer.add_name(f"synthetic-{ARCH}-{hidden}x{layers}-{experts}e")
    writer.add_file_type(LlamaFileType.MOSTLY_Q8_0 if q8_0 else LlamaFileType.ALL_F32)
    writer.add_block_count(layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(expert_ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_expert_count(experts)
    writer.add_expert_used_count(top_k)
    writer.add_expert_feed_forward_length(expert_ffn)
    vocab = _copy_tokenizer(writer, Path(vocab_gguf))
    tensors = _tensors(hidden, layers, experts, expert_ffn, heads, kv_heads, head_dim, vocab, q8_0)
    for t in tensors:
        raw = GGMLQuantizationType.Q8_0 if t.quant else GGMLQuantizationType.F32
        dtype = np.dtype(np.uint8) if t.quant else np.dtype(np.float32)
        writer.add_tensor_info(t.name, t.stored_shape, dtype, t.nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for t in tensors:  # one tensor in memory at a time
        writer.write_tensor_data(_tensor_data(rng, t))
    writer.close()
    tmp.rename(path)
    return path
