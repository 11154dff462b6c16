"""Plan where a model's weights, KV cache and scratch buffers go before loading it.

Inputs: a `ModelLayout` (bytes per transformer block, split into routed-expert tensors and
everything else, plus what the KV cache needs per token), a `Hardware` snapshot (free RAM,
free VRAM per GPU), and what the person asked for. Output: a `MemoryPlan` in llama.cpp's
own terms (`n_gpu_layers`, experts of the first N blocks kept in CPU RAM like `--n-cpu-moe`,
`n_ctx`) that `describe()` prints before anything is loaded.

The placement rules follow llama.cpp (src/llama-model.cpp, common/arg.cpp):
  - `n_gpu_layers = g` puts the LAST g blocks on the GPU; g = n_layers + 1 also puts the
    output head there. The token embedding always stays in CPU RAM.
  - the KV cache of a block lives where the block lives (`offload_kqv`).
  - `--n-cpu-moe N` keeps the routed-expert tensors (`ffn_*_exps`) of blocks 0..N-1 in CPU
    RAM while the rest of those blocks is on the GPU.
  - KV cache bytes per token and block come from engine.model_layout (MLA included).

Why experts go to RAM before whole blocks do (the ktransformers / `--n-cpu-moe` idea): a
token reads only top-k of E experts, so an expert tensor costs little bandwidth per byte of
memory it occupies, while attention and the dense parts are read in full for every token.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

from converters.core.errors import ItamaeError, NotEnoughMemory
from engine.model_layout import KV_TYPE_BYTES, BlockWeights, ModelLayout

__all__ = ["BlockWeights", "KV_TYPE_BYTES", "ModelLayout"]  # kept importable from here

GIB = 1024**3
MIB = 1024**2

# Room left for what the plan does not itemise: the CUDA context and cuBLAS workspaces on a
# GPU (~300-500 MiB in practice), the Python process, UI and OS page tables in RAM.
GPU_RESERVE_BYTES = 512 * MIB
RAM_RESERVE_BYTES = 768 * MIB

DEFAULT_CONTEXT = 8192  # a long chat; the model's trained maximum is often far more than fits
MIN_CONTEXT = 2048  # below this a chat with a system prompt stops being useful
UBATCH = 512  # llama.cpp's default physical batch, which sizes the compute buffers

# Nominal sustained bandwidths, only used to name the decode bottleneck and a rough upper
# bound on tokens/s: a mid-range consumer GPU (RTX 4060 Ti: 288 GB/s) and dual-channel
# DDR4/DDR5 as measured by STREAM on desktops (~40 GB/s).
GPU_BANDWIDTH = 300e9
RAM_BANDWIDTH = 40e9

# Whole-model bits per weight of llama.cpp's quant mixes, from the sizes its quantize tool
# lists for Llama-3-8B (tools/quantize/quantize.cpp, GiB * 8 / 8.03e9 params). Largest first.
QUANT_LADDER = (
    ("Q8_0", 8.51),
    ("Q6_K", 6.57),
    ("Q5_K_M", 5.70),
    ("Q4_K_M", 4.90),
    ("Q3_K_M", 4.00),
    ("Q2_K", 3.17),
)


@dataclass
class GpuMemory:
    name: str
    free_bytes: int
    total_bytes: int


@dataclass
class Hardware:
    """A snapshot of what memory is free. `gpu_offload` is False on a CPU-only build."""

    ram_available_bytes: int
    ram_total_bytes: int = 0
    gpus: list[GpuMemory] = field(default_factory=list)
    gpu_offload: bool = True

    @property
    def vram_free_bytes(self) -> int:
        # llama.cpp's default split mode spreads blocks over every GPU, so free VRAM adds up.
        return sum(g.free_bytes for g in self.gpus) if self.gpu_offload else 0

    @classmethod
    def of(cls, ram_gb: float, vram_gb: float = 0.0) -> Hardware:
        """Synthetic hardware for planning ahead ("would this fit on 8 GB VRAM + 32 GB RAM?")."""
        gpus = [GpuMemory("GPU", int(vram_gb * GIB), int(vram_gb * GIB))] if vram_gb else []
        return cls(int(ram_gb * GIB), int(ram_gb * GIB), gpus, gpu_offload=bool(gpus))


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
    notes: list[str] = field(default_factory=list)

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
            f"decode is bound by {where}: {_gb(ram)} read from RAM and {_gb(gpu)} from VRAM "
            f"per token (at most ~{rate:.0f} tokens/s at nominal bandwidths)"
        )

    def describe(self) -> str:
        layout, hw = self.layout, self.hardware
        lines = [
            f"Memory plan for {layout.name or layout.arch} ({layout.quant}, "
            f"{_gb(layout.weight_bytes)} of weights, {layout.bits_per_weight:.2f} bits/weight)",
            f"  context      {self.n_ctx} tokens, KV cache {_gb(self.kv_bytes)} "
            f"({self.cache_type}{', MLA latent' if layout.mla else ''})",
            f"  GPU          {_gb(self.gpu_bytes)} of {_gb(hw.vram_free_bytes)} free"
            + ("" if hw.gpu_offload and hw.gpus else " (no GPU offload on this machine)"),
            f"  CPU RAM      {_gb(self.ram_bytes)} of {_gb(hw.ram_available_bytes)} available",
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
            hint = _smaller_quant_hint(layout, hw, self.cache_type)
            lines.append(f"  DOES NOT FIT {hint}")
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
            "fits": self.fits,
            "bytes_per_token_gpu": int(gpu),
            "bytes_per_token_ram": int(ram),
            "bottleneck": self.bottleneck(),
            "notes": list(self.notes),
            "hardware": asdict(self.hardware),
        }


def _gb(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def compute_buffer_bytes(layout: ModelLayout) -> int:
    """llama.cpp's scratch for one ubatch with flash attention: logits, the residual stream
    and a few temporaries of width n_embd, the FFN activations. An estimate with margin: a
    7B Llama gives ~180 MiB here where llama.cpp reports ~160 MiB."""
    width = layout.n_vocab + 6 * layout.n_embd + 3 * layout.ffn_width
    return 4 * UBATCH * width + 64 * MIB


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
    compute = compute_buffer_bytes(layout)
    gpu = ram = 0
    for i, block in enumerate(layout.blocks):
        kv = int(layout.kv_bytes_per_token(i, cache_type) * n_ctx)
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
    )


def _best_gpu_placement(layout: ModelLayout, hardware: Hardware, n_ctx: int, cache_type: str):
    """The placement that keeps the most on the GPU: everything; else experts of the first N
    blocks in RAM (N as small as fits); else all experts in RAM and fewer blocks on the GPU."""
    n = layout.n_layers
    vram = hardware.vram_free_bytes

    def gpu_fits(plan: MemoryPlan) -> bool:
        return plan.gpu_bytes <= vram

    candidates = [(n + 1, 0)]
    if layout.n_experts:
        candidates += [(n + 1, k) for k in range(1, n + 1)]
        candidates += [(g, n) for g in range(n, -1, -1)]
    else:
        candidates += [(g, 0) for g in range(n, -1, -1)]
    for gpu_layers, cpu_moe in candidates:
        plan = place(layout, hardware, n_ctx, gpu_layers, cpu_moe, cache_type)
        if gpu_fits(plan) or gpu_layers == 0:
            return plan
    raise AssertionError("gpu_layers == 0 always fits the GPU")  # pragma: no cover


def plan_memory(
    layout: ModelLayout,
    hardware: Hardware,
    *,
    n_ctx: int | None = None,
    gpu_layers: int | None = None,
    cpu_moe_layers: int | None = None,
    cache_type: str = "f16",
    check: bool = True,
) -> MemoryPlan:
    """Choose GPU layers, expert placement and context so the model fits; see module doc.

    `n_ctx`, `gpu_layers`, `cpu_moe_layers` given by the person are kept as they are; what
    is left to the planner is chosen. With `check`, a plan that does not fit raises
    NotEnoughMemory naming a smaller quant that would.
    """
    wanted = n_ctx or min(layout.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    contexts = [wanted] if n_ctx else _shrinking(wanted)
    plan = None
    for ctx in contexts:
        plan = _plan_at(layout, hardware, ctx, gpu_layers, cpu_moe_layers, cache_type)
        if plan.fits:
            break
    assert plan is not None
    if wanted != plan.n_ctx:
        plan.notes.append(f"context shortened from {wanted} to {plan.n_ctx} tokens to fit")
    if cpu_moe_layers and not hardware.gpu_offload:
        plan.notes.append(
            "expert placement (cpu_moe) has no effect on a CPU-only build: "
            "every tensor is already in CPU RAM"
        )
    if check and not plan.fits:
        raise NotEnoughMemory(_refusal(plan), _smaller_quant_hint(layout, hardware, cache_type))
    return plan


def _shrinking(n_ctx: int) -> list[int]:
    sizes = [n_ctx]
    while sizes[-1] // 2 >= MIN_CONTEXT:
        sizes.append(sizes[-1] // 2)
    return sizes


def _plan_at(layout, hardware, n_ctx, gpu_layers, cpu_moe_layers, cache_type) -> MemoryPlan:
    if gpu_layers is None and cpu_moe_layers is None and hardware.gpu_offload:
        return _best_gpu_placement(layout, hardware, n_ctx, cache_type)
    if gpu_layers is None:  # experts placement given: as many blocks on the GPU as fit
        gpu_layers = layout.n_layers + 1 if hardware.gpu_offload else 0
        for g in range(gpu_layers, -1, -1):
            plan = place(layout, hardware, n_ctx, g, cpu_moe_layers or 0, cache_type)
            if plan.gpu_bytes <= hardware.vram_free_bytes or g == 0:
                return plan
    if cpu_moe_layers is None:  # GPU layers given: keep experts of the fewest blocks in RAM
        for k in range(layout.n_layers + 1 if layout.n_experts else 1):
            plan = place(layout, hardware, n_ctx, gpu_layers, k, cache_type)
            if plan.gpu_bytes <= hardware.vram_free_bytes or not plan.gpu_layers:
                return plan
        return plan
    return place(layout, hardware, n_ctx, gpu_layers, cpu_moe_layers, cache_type)


def _refusal(plan: MemoryPlan) -> str:
    hw = plan.hardware
    return (
        f"{plan.layout.name or plan.layout.arch} ({plan.layout.quant}, "
        f"{_gb(plan.layout.weight_bytes)}) does not fit this machine even with a "
        f"{plan.n_ctx}-token context: it needs {_gb(plan.ram_bytes)} of RAM "
        f"({_gb(hw.ram_available_bytes)} available) and {_gb(plan.gpu_bytes)} of VRAM "
        f"({_gb(hw.vram_free_bytes)} free)."
    )


def smaller_quant_that_fits(
    layout: ModelLayout, hardware: Hardware, cache_type: str = "f16"
) -> MemoryPlan | None:
    """The plan for the largest llama.cpp quant below this file's bits/weight that fits."""
    current = layout.bits_per_weight
    for name, bpw in QUANT_LADDER:
        if bpw >= current - 0.05:
            continue
        plan = plan_memory(
            layout.requantized(name, bpw), hardware, cache_type=cache_type, check=False
        )
        if plan.fits:
            return plan
    return None


def _smaller_quant_hint(layout: ModelLayout, hardware: Hardware, cache_type: str) -> str:
    plan = smaller_quant_that_fits(layout, hardware, cache_type)
    if plan is None:
        return (
            f"No llama.cpp quant down to {QUANT_LADDER[-1][0]} fits either: free memory, "
            "use a smaller model, or run it on a bigger machine through the remote engine."
        )
    quant = plan.layout.quant
    return (
        f"A {quant} file (about {_gb(plan.layout.weight_bytes)}) would fit with a "
        f"{plan.n_ctx}-token context: `itamae convert <original model folder> -o model-{quant.lower()}.gguf "
        f"--quant {quant.lower()}`."
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.memory_plan MODEL.gguf [--ram-gb R --vram-gb V]`: print a plan."""
    parser = argparse.ArgumentParser(prog="python -m engine.memory_plan", description=main.__doc__)
    parser.add_argument("model", help="a .gguf file")
    parser.add_argument("--ram-gb", type=float, help="plan for this much free RAM instead")
    parser.add_argument("--vram-gb", type=float, default=0.0, help="with --ram-gb: free VRAM")
    parser.add_argument("--ctx", type=int, help="context length (default: chosen to fit)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from engine.llamacpp.devices import detect_hardware
    from engine.llamacpp.gguf_layout import read_gguf_layout

    try:
        layout = read_gguf_layout(args.model)
        hardware = Hardware.of(args.ram_gb, args.vram_gb) if args.ram_gb else detect_hardware()
        plan = plan_memory(layout, hardware, n_ctx=args.ctx)
    except ItamaeError as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
