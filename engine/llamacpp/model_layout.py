"""What a model needs in memory, wherever it is put: weights per transformer block (routed
experts apart from the rest, as llama.cpp's `--cpu-moe` splits them) and the KV cache per
token, MLA included. engine/llamacpp/memory_plan.py decides where it goes.

KV cache sizes follow llama.cpp (src/llama-kv-cache.cpp, src/llama-hparams.cpp): per block,
`n_head_kv * (key_length + value_length)` elements per token; MLA models (DeepSeek-V2/V3
GGUFs with `attention.key_length_mla`) cache one latent of `kv_lora_rank + qk_rope_head_dim`
(written as key_length with one KV head) and no V (`has_v = !is_mla`). DeepSeek-V3.2's
sparse attention adds one `attention.indexer.key_length` key per token and layer
(src/llama-kv-cache-dsa.cpp: a second cache beside the main one).
DeepSeek-V4 GGUFs (`attention.compress_ratios`; src/llama-kv-cache-dsv4.cpp) cache one K-only
head of key_length per token and layer, and per compressed layer one more entry per
`ratio` tokens (cells padded to 256): ratio-4 layers (CSA) a key and an indexer key, ratio-128
layers (HCA) a key; each compressed layer also keeps its compressor's F32 state of the
window being filled (kv and score rows, a fixed size, counted with the recurrent states).
Linear-attention and state-space layers (`attention.recurrent_layers`; Nemotron-H's Mamba-2
layers, which its GGUF does not list, are the blocks with a conv1d) keep no KV cache but a
fixed recurrent state per sequence, in F32 whatever the KV cache type
(src/llama-memory-recurrent.cpp; sizes from llama_hparams::n_embd_r and n_embd_s):
(conv_kernel - 1) * (inner_size + 2 * group_count * state_size) conv inputs and
state_size * inner_size state values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Bytes per KV cache element for llama.cpp's cache types (ggml block sizes).
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
CSA_RATIO = 4  # llama.cpp's DSV4_CSA_RATIO: the compressed layers that also have an indexer
CELL_PAD = 256  # compressed caches' cells are padded to this (GGML_PAD(..., 256u))


@dataclass
class BlockWeights:
    """One transformer block's weights. `dense_*` is everything but the routed experts."""

    dense_bytes: int
    expert_bytes: int = 0
    dense_params: int = 0  # elements, vectors included
    expert_params: int = 0
    norm_params: int = 0  # vectors (norms, biases): F32 whatever the quant
    norm_bytes: int = 0


@dataclass
class ModelLayout:
    """What a model needs in memory, independent of where it is put."""

    name: str
    arch: str  # the file's own architecture name (GGUF `general.architecture`)
    quant: str  # dominant tensor type or file type, e.g. "Q8_0"
    blocks: list[BlockWeights]
    input_bytes: int  # token embedding: always in CPU RAM in llama.cpp
    output_bytes: int  # output norm + head: on the GPU only when every block is
    input_params: int = 0
    output_params: int = 0
    context_length: int = 4096  # trained maximum
    n_embd: int = 0
    n_vocab: int = 0
    n_head: int = 0
    kv_heads: list[int] = field(default_factory=list)  # per block; 0 = no KV cache there
    key_length: int = 0  # cached K width per KV head (for MLA: kv_lora_rank + rope dims)
    value_length: int = 0
    # Gemma 4: its sliding-window blocks cache keys and values of their own width
    swa_blocks: list[bool] = field(default_factory=list)
    key_length_swa: int = 0
    value_length_swa: int = 0
    mla: bool = False  # DeepSeek MLA: one latent per token, no separate V
    # DeepSeek Sparse Attention: llama.cpp keeps a second cache of one indexer key per token
    # and layer (llama_kv_cache_dsa), in the K cache's type
    indexer_key_length: int = 0
    n_experts: int = 0
    experts_per_token: int = 0
    ffn_width: int = 0  # widest FFN activation per token (dense FFN or top-k experts)
    expert_ffn: int = 0  # one routed expert's FFN width (0: dense FFN only)
    shared_ffn: int = 0  # the shared experts' FFN width, all of them together
    ffn_beside_experts: int = 0  # a dense FFN run beside the experts in each block (Gemma 4)
    n_masks: int = 1  # attention masks llama.cpp builds per ubatch (2 with sliding windows)
    conv_channels: int = 0  # linear attention's conv1d channels (ssm inner + 2 groups x state)
    ssm_in_width: int = 0  # Mamba-2's fused input projection (0: Gated DeltaNet's, split)
    ssm_inner: int = 0
    state_bytes: list[int] = field(default_factory=list)  # per block: recurrent state, fixed
    # DeepSeek-V4: per block 0 (window only), 4 or 128; its raw cache holds K alone
    compress_ratios: list[int] = field(default_factory=list)
    k_only: bool = False
    indexer_heads: int = 0

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def weight_bytes(self) -> int:
        blocks = sum(b.dense_bytes + b.expert_bytes for b in self.blocks)
        return blocks + self.input_bytes + self.output_bytes

    @property
    def expert_bytes(self) -> int:
        return sum(b.expert_bytes for b in self.blocks)

    @property
    def total_params(self) -> int:
        blocks = sum(b.dense_params + b.expert_params for b in self.blocks)
        return blocks + self.input_params + self.output_params

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / max(self.total_params, 1)

    def kv_bytes_per_token(self, block: int, cache_type: str = "f16") -> float:
        heads = self.kv_heads[block] if block < len(self.kv_heads) else 0
        per_element = KV_TYPE_BYTES[cache_type]
        if self.mla:
            indexer = self.indexer_key_length if heads else 0
            return (heads * self.key_length + indexer) * per_element
        swa = block < len(self.swa_blocks) and self.swa_blocks[block] and self.key_length_swa
        if swa:
            return heads * (self.key_length_swa + self.value_length_swa) * per_element
        if self.k_only:
            return heads * self.key_length * per_element
        return heads * (self.key_length + self.value_length) * per_element

    def compressed_cache_bytes(self, block: int, n_ctx: int, cache_type: str = "f16") -> int:
        """DeepSeek-V4's compressed entries of block `block` for a context of n_ctx."""
        ratio = self.compress_ratios[block] if block < len(self.compress_ratios) else 0
        if not ratio or not (self.kv_heads[block] if block < len(self.kv_heads) else 0):
            return 0
        cells = -(-max(1, -(-n_ctx // ratio)) // CELL_PAD) * CELL_PAD
        width = self.key_length + (self.indexer_key_length if ratio == CSA_RATIO else 0)
        return int(cells * width * KV_TYPE_BYTES[cache_type])

    def block_cache_bytes(self, block: int, n_ctx: int, cache_type: str = "f16") -> int:
        """What block `block` keeps for a context of n_ctx: KV or recurrent state."""
        state = self.state_bytes[block] if block < len(self.state_bytes) else 0
        kv = int(self.kv_bytes_per_token(block, cache_type) * n_ctx)
        return kv + self.compressed_cache_bytes(block, n_ctx, cache_type) + state

    @property
    def recurrent_state_bytes(self) -> int:
        return sum(self.state_bytes)

    def kv_cache_bytes(self, n_ctx: int, cache_type: str = "f16") -> int:
        per_token = sum(self.kv_bytes_per_token(i, cache_type) for i in range(self.n_layers))
        compressed = (
            self.compressed_cache_bytes(i, n_ctx, cache_type) for i in range(self.n_layers)
        )
        return int(per_token * n_ctx) + sum(compressed)

    def requantized(self, name: str, bits_per_weight: float) -> ModelLayout:
        """The same model if its matrices were stored at `bits_per_weight` on average."""

        def scaled(params: int) -> int:
            return int(params * bits_per_weight / 8)

        blocks = [
            BlockWeights(
                dense_bytes=b.norm_bytes + scaled(b.dense_params - b.norm_params),
                expert_bytes=scaled(b.expert_params),
                dense_params=b.dense_params,
                expert_params=b.expert_params,
                norm_params=b.norm_params,
                norm_bytes=b.norm_bytes,
            )
            for b in self.blocks
        ]
        return replace(
            self,
            quant=name,
            blocks=blocks,
            input_bytes=scaled(self.input_params),
            output_bytes=scaled(self.output_params),
        )
