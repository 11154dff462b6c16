"""One placement of a model's weights, KV cache and scratch buffers, and what it costs.

A `MemoryPlan` is written in llama.cpp's own terms (`n_gpu_layers`, experts of the first N
blocks kept in CPU RAM like `--n-cpu-moe`, `n_ctx`); `place()` prices one such choice from
a `ModelLayout` (engine/llamacpp/model_layout.py) and a `Hardware` snapshot
(engine/llamacpp/devices.py). Which placement to choose is engine/llamacpp/memory_plan.py's
question; `describe()` prints the chosen one before anything is loaded.

The placement rules follow llama.cpp (src/llama-model.cpp, common/arg.cpp):
  - `n_gpu_layers = g` puts the LAST g blocks on the GPU; g = n_layers + 1 also puts the
    output head there. The token embedding always stays in CPU RAM.
  - the KV cache of a block lives where the block lives (`offload_kqv`).
  - `--n-cpu-moe N` keeps the routed-expert tensors (`ffn_*_exps`) of blocks 0..N-1 in CPU
    RAM while the rest of those blocks is on the GPU.
  - KV cache bytes per token and block come from the layout (MLA included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .devices import GIB, Hardware
from .model_layout import CSA_RATIO, ModelLayout

MIB = 1024**2

# Room left for what the plan does not itemise: the CUDA context and cuBLAS workspaces on a
# GPU (~300-500 MiB in practice), the Python process, UI and OS page tables in RAM.
GPU_RESERVE_BYTES = 512 * MIB
RAM_RESERVE_BYTES = 768 * MIB

UBATCH = 512  # llama.cpp's default physical batch, which sizes the compute buffers

# Nominal sustained bandwidths, only used to name the decode bottleneck and a rough upper
# bound on tokens/s: a mid-range consumer GPU (RTX 4060 Ti: 288 GB/s) and dual-channel
# DDR4/DDR5 as measured by STREAM on desktops (~40 GB/s).
GPU_BANDWIDTH = 300e9
RAM_BANDWIDTH = 40e9


@dataclass
class MemoryPlan:
    """Where everything goes, in llama.cpp's terms, and what it costs."""

    layout: ModelLayout
    hardware: Hardware
    n_ctx: int
    gpu_layers: int  # llama.cpp n_gpu_layers: the last N blocks (+1: the output head)
    cpu_moe_layers: int  # routed experts of blocks [0, N) stay in CPU RAM
    gpu_bytes: int
    ram_bytes: int
    kv_bytes: int
    compute_bytes: int
    cache_type: str = "f16"
    state_bytes: int = 0  # recurrent state of linear-attention layers (fixed, F32)
    notes: list[str] = field(default_factory=list)
    advice: str = ""  # what would fit instead, when this plan does not (the planner says)

    @property
    def fits(self) -> bool:
        gpu_ok = self.gpu_bytes <= self.hardware.vram_free_bytes or self.gpu_bytes == 0
        return gpu_ok and self.ram_bytes <= self.hardware.ram_available_bytes

    def gpu_blocks(self) -> range:
        n = self.layout.n_layers
        return range(n - min(self.gpu_layers, n), n)

    def output_on_gpu(self) -> bool:
        return self.gpu_layers > self.layout.n_layers

    def expert_override_patterns(self) -> list[str]:
        """Tensor-name regexes for llama.cpp's tensor_buft_overrides (common/common.h)."""
        exps = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
        if self.cpu_moe_layers <= 0 or not self.layout.n_experts:
            return []
        if self.cpu_moe_layers >= self.layout.n_layers:
            return [exps]  # --cpu-moe
        return [rf"blk\.{i}{exps}" for i in range(self.cpu_moe_layers)]  # --n-cpu-moe N

    def bytes_read_per_token(self) -> tuple[float, float]:
        """(GPU bytes, RAM bytes) read to decode one token: dense weights in full, routed
        experts at top-k/E of their size, the embedding row is negligible."""
        layout = self.layout
        share = layout.experts_per_token / layout.n_experts if layout.n_experts else 1.0
        on_gpu = set(self.gpu_blocks())
        gpu = ram = 0.0
        for i, block in enumerate(layout.blocks):
            experts = block.expert_bytes * share
            if i in on_gpu:
                gpu += block.dense_bytes
                if i < self.cpu_moe_layers:
                    ram += experts
                else:
                    gpu += experts
            else:
                ram += block.dense_bytes + experts
        if self.output_on_gpu():
            gpu += layout.output_bytes
        else:
            ram += layout.output_bytes
        return gpu, ram

    def bottleneck(self) -> str:
        gpu, ram = self.bytes_read_per_token()
        gpu_s, ram_s = gpu / GPU_BANDWIDTH, ram / RAM_BANDWIDTH
        rate = 1.0 / max(gpu_s + ram_s, 1e-9)
        where = "CPU RAM bandwidth" if ram_s >= gpu_s else "GPU memory bandwidth"
        return (
            f"decode is bound by {where}: {size_text(ram)} read from RAM and "
            f"{size_text(gpu)} from VRAM per token "
            f"(at most ~{rate:.0f} tokens/s at nominal bandwidths)"
        )

    def describe(self) -> str:
        layout, hw = self.layout, self.hardware
        lines = [
            f"Memory plan for {layout.name or layout.arch} ({layout.quant}, "
            f"{size_text(layout.weight_bytes)} of weights, "
            f"{layout.bits_per_weight:.2f} bits/weight)",
            f"  context      {self.n_ctx} tokens, KV cache {size_text(self.kv_bytes)} "
            f"({self.cache_type}{', MLA latent' if layout.mla else ''})",
            f"  GPU          {size_text(self.gpu_bytes)} of {size_text(hw.vram_free_bytes)} free"
            + ("" if hw.gpu_offload and hw.gpus else " (no GPU offload on this machine)"),
            f"  CPU RAM      {size_text(self.ram_bytes)} of "
            f"{size_text(hw.ram_available_bytes)} available",
            f"  n_gpu_layers {self.gpu_layers} of {layout.n_layers + 1} (blocks + output head)",
        ]
        if layout.n_experts:
            lines.append(
                f"  experts      {self._expert_placement()}; "
                f"{layout.experts_per_token} of {layout.n_experts} used per token"
            )
        lines.append(f"  bottleneck   {self.bottleneck()}")
        lines += [f"  note         {note}" for note in self.notes]
        if not self.fits:
            lines.append(f"  DOES NOT FIT {self.advice}")
        return "\n".join(lines)

    def _expert_placement(self) -> str:
        n, cpu_moe, gpu = self.layout.n_layers, self.cpu_moe_layers, set(self.gpu_blocks())
        if not gpu:
            return "all in CPU RAM"
        in_ram = sorted(set(range(n)) - gpu | set(range(min(cpu_moe, n))))
        if not in_ram:
            return "all on the GPU"
        if len(in_ram) == n:
            return "all in CPU RAM (attention and dense weights on the GPU)"
        return f"blocks 0-{in_ram[-1]} in CPU RAM, the rest on the GPU"

    def to_json(self) -> dict:
        gpu, ram = self.bytes_read_per_token()
        return {
            "model": self.layout.name,
            "arch": self.layout.arch,
            "quant": self.layout.quant,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.gpu_layers,
            "cpu_moe_layers": self.cpu_moe_layers,
            "gpu_bytes": self.gpu_bytes,
            "ram_bytes": self.ram_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "state_bytes": self.state_bytes,
            "fits": self.fits,
            "bytes_per_token_gpu": int(gpu),
            "bytes_per_token_ram": int(ram),
            "bottleneck": self.bottleneck(),
            "notes": list(self.notes),
            "hardware": asdict(self.hardware),
        }


def size_text(n: float) -> str:
    """Bytes as a person reads them: GiB, or MiB below one GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def _padded(n: int, to: int = 256) -> int:
    return -(-n // to) * to


def compute_buffer_bytes(layout: ModelLayout, n_ctx: int, n_ubatch: int = UBATCH) -> int:
    """llama.cpp's compute buffer: the peak of live activations ggml-alloc finds in the
    worst-case graph it reserves (src/llama-context.cpp, sched_reserve: one ubatch of
    min(n_ubatch, n_ctx) tokens, every one an output). That peak is the largest of these
    stages, in F32 per token of the ubatch unless said otherwise:
      - the output head: n_vocab logits plus two n_embd-wide rows (the last hidden state
        and its norm); the masks are freed by then. Real vocabularies make this the peak.
      - a block's FFN with the attention masks still live (F16, n_kv x ubatch each, n_kv
        the context padded to 256; two with sliding-window layers): gate, up and their
        product for the top-k experts (or the dense FFN; fewer of them where a narrow dense
        FFN between MoE blocks fits freed rows, Llama 4's), four n_embd rows, half the shared
        expert's width (all of a dense FFN run beside the experts, Gemma 4's), six rows
        of n_experts (router logits, probabilities, the sort of all experts: Kimi's 384
        make it a third of the peak); at least five n_embd rows (residual, norms,
        attention out: Llama 4's top-1 of narrow experts sits on that floor).
      - a Gated DeltaNet layer (hybrids): five n_embd rows and five conv-channel rows
        (projections, conv input with its state, conv output), without a mask live.
      - a Mamba-2 layer (Nemotron-H), masks live: three n_embd rows (the unused embeddings
        input, the layer input, its norm), the fused input projection, the conv input (its
        state and the ubatch: in the norm's freed rows when no wider), the conv output and
        the gate z made contiguous, inner-wide. Read off ggml-alloc's addresses for the
        first Mamba-2 layer with its inner width 0.5x-4x n_embd; a later one sat up to 8%
        higher where the conv is six times n_embd.
      - DeepSeek-V3.2's indexer: its F32 scores and two F16 masks, n_kv x ubatch each.
    The coefficients were read off ggml-alloc's reported sizes on fixture shapes varied one
    dimension at a time (n_embd, expert and shared widths, context, ubatch); the tests
    compare the sum with llama.cpp's log at several contexts and a real 152k vocabulary."""
    tokens = min(n_ubatch, _padded(n_ctx))
    n_kv = _padded(n_ctx)
    if layout.compress_ratios and any(layout.compress_ratios):
        return _compressed_attention_compute(layout, n_ctx, tokens, n_kv)
    embd = layout.n_embd
    attention = any(layout.kv_heads)
    masks = 2 * n_kv * tokens * layout.n_masks if attention else 0
    output = layout.n_vocab + 2 * embd
    ffn = 3 * layout.ffn_width + 4 * embd  # a dense FFN (or the dense lead blocks)
    if layout.expert_ffn:
        routed = 3 * layout.expert_ffn * layout.experts_per_token + 6 * layout.n_experts
        moe = routed + 4 * embd + layout.shared_ffn // 2 + 3 * layout.ffn_beside_experts
        dense_lead = any(not b.expert_bytes for b in layout.blocks)
        if _dense_between_moe(layout):
            ffn = _interleaved_dense_rows(layout.ffn_width, embd)
        ffn = max(moe, ffn) if dense_lead else moe
    stages = [4 * tokens * output, masks + 4 * tokens * max(ffn, 5 * embd)]
    if layout.ssm_in_width:  # Mamba-2 (Nemotron-H)
        conv = layout.conv_channels
        conv_input = conv if conv > embd else 0  # else it takes the norm's freed rows
        mamba = 3 * embd + layout.ssm_in_width + conv_input + conv + layout.ssm_inner
        stages.append(masks + 4 * tokens * mamba)
    elif layout.conv_channels:
        stages.append(4 * tokens * (5 * embd + 5 * layout.conv_channels))
    if layout.indexer_key_length:
        stages.append(8 * n_kv * tokens + 4 * tokens * 9 * embd)
    return max(stages)


def _dense_between_moe(layout: ModelLayout) -> bool:
    """Dense blocks interleaved with MoE ones (Llama 4 Maverick's `interleave_moe_layer_step`),
    not only leading them (DeepSeek's first_k_dense_replace)."""
    seen_moe = False
    for block in layout.blocks:
        seen_moe = seen_moe or bool(block.expert_bytes)
        if seen_moe and not block.expert_bytes:
            return True
    return False


def _interleaved_dense_rows(width: int, embd: int) -> int:
    """F32 rows per ubatch token at a Llama 4 dense block's FFN (src/models/llama4.cpp):
    four n_embd rows (the batch's unused embeddings input, the block input, ffn_inp,
    ffn_norm) and the FFN's three `width` rows (gate, up, their SwiGLU product), less those
    ggml-alloc fits into rows the block has already freed: the attention output's row is
    free when gate is allocated, and ffn_norm's beside it once up is computed, so a width up
    to n_embd puts only up on top and a width up to 2 x n_embd up and gate (the product goes
    below). Read off the addresses ggml-alloc gave every node of the fixture's graph (widths
    n_embd to 8 x n_embd, 4 and 8 blocks: within 1%, except 8 blocks at 2 x n_embd, where
    a later dense block finds its free rows one n_embd higher: 9% under). Llama's own dense
    blocks, back to back, find no such rows and keep the 3 x width count; real Maverick's
    16384-wide dense FFN over 5120 puts all three on top, as that count does."""
    on_top = 1 if width <= embd else 2 if width <= 2 * embd else 3
    return on_top * width + 4 * embd


# DeepSeek-V4's activations per token besides the masks and the indexer (F32 values): seven
# n_embd rows (the four hyper-connection streams and their mixes) and a remainder that does
# not follow one dimension, read off the fixture's graph (shapes varied one at a time)
V4_ROWS_PER_EMBD, V4_REST = 7, 2227


def _compressed_attention_compute(layout: ModelLayout, n_ctx: int, tokens: int, n_kv: int) -> int:
    """DeepSeek-V4's compute buffer (src/models/deepseek4.cpp), the larger of two stages:
      - the CSA layers' indexer: the F16 window mask (n_kv x ubatch), the CSA and indexer
        masks over the compressed entries (n_ctx / 4 padded to 256, F16 each) and the
        indexer's queries (heads x key_length, twice, F32) beside the rows every layer keeps;
      - the window attention at long contexts: its F16 mask and F32 scores, 6 bytes per
        (key, query) with one compressed mask, beside the same rows without the indexer's.
    The output head's logits (n_vocab F32 per token, as for every model) when they are more.
    Fitted on llama.cpp's reported sizes for the fixture's shapes with n_embd and the indexer
    varied, contexts 256-16k (within 1% there); a doubled expert width came out 20% under the
    estimate (ggml-alloc reuses buffers differently), so other shapes are approximate."""
    csa = CSA_RATIO in layout.compress_ratios
    quarter = _padded(max(1, -(-n_ctx // CSA_RATIO))) if csa else 0
    rows = V4_ROWS_PER_EMBD * layout.n_embd + V4_REST
    indexer = 2 * layout.indexer_heads * layout.indexer_key_length if csa else 0
    with_indexer = tokens * (2 * n_kv + 4 * quarter) + 4 * tokens * (rows + indexer)
    window = tokens * (6 * n_kv + 2 * quarter) + 4 * tokens * rows
    output = 4 * tokens * (layout.n_vocab + 2 * layout.n_embd)
    return max(with_indexer, window, output)


def place(
    layout: ModelLayout,
    hardware: Hardware,
    n_ctx: int,
    gpu_layers: int,
    cpu_moe_layers: int,
    cache_type: str = "f16",
) -> MemoryPlan:
    """Price one placement: bytes on the GPU and in RAM (including reserves)."""
    n = layout.n_layers
    gpu_layers = max(0, min(gpu_layers, n + 1)) if hardware.gpu_offload else 0
    on_gpu = set(range(n - min(gpu_layers, n), n))
    compute = compute_buffer_bytes(layout, n_ctx)
    gpu = ram = 0
    for i, block in enumerate(layout.blocks):
        kv = layout.block_cache_bytes(i, n_ctx, cache_type)  # KV or a recurrent state
        if i in on_gpu:
            experts_in_ram = i < cpu_moe_layers
            gpu += block.dense_bytes + kv + (0 if experts_in_ram else block.expert_bytes)
            ram += block.expert_bytes if experts_in_ram else 0
        else:
            ram += block.dense_bytes + block.expert_bytes + kv
    if gpu_layers > n:
        gpu += layout.output_bytes
    else:
        ram += layout.output_bytes
    ram += layout.input_bytes + compute + RAM_RESERVE_BYTES
    if gpu_layers:
        gpu += compute + GPU_RESERVE_BYTES
    return MemoryPlan(
        layout=layout,
        hardware=hardware,
        n_ctx=n_ctx,
        gpu_layers=gpu_layers,
        cpu_moe_layers=max(0, min(cpu_moe_layers, n)),
        gpu_bytes=gpu,
        ram_bytes=ram,
        kv_bytes=layout.kv_cache_bytes(n_ctx, cache_type),
        compute_bytes=compute,
        cache_type=cache_type,
        state_bytes=layout.recurrent_state_bytes,
    )
