"""Plan where a model's weights, KV cache and scratch buffers go before loading it.

Inputs: a `ModelLayout` (bytes per transformer block, split into routed-expert tensors and
everything else, plus what the KV cache needs per token), a `Hardware` snapshot (free RAM,
free VRAM per GPU), and what the person asked for. Output: the `MemoryPlan`
(engine/llamacpp/placement.py, which prices one placement by llama.cpp's rules) that keeps
the most on the GPU and still fits, with a context shortened if it must be; for a model
that fits nowhere, the largest smaller llama.cpp quant that would.

Why experts go to RAM before whole blocks do (the ktransformers / `--n-cpu-moe` idea): a
token reads only top-k of E experts, so an expert tensor costs little bandwidth per byte of
memory it occupies, while attention and the dense parts are read in full for every token.
"""

from __future__ import annotations

import argparse
import json
import sys

from converters import archs
from converters.conversion.recipes import get_recipe
from converters.core.errors import ItamaeError, NotEnoughMemory

from .devices import Hardware, detect_hardware
from .gguf_layout import read_gguf_layout
from .model_layout import ModelLayout
from .placement import MemoryPlan, place, size_text

DEFAULT_CONTEXT = 8192  # a long chat; the model's trained maximum is often far more than fits
MIN_CONTEXT = 2048  # below this a chat with a system prompt stops being useful

# The quants a too-large model is offered instead, largest first, with the whole-model
# bits per weight of the converter's recipe table.
QUANT_LADDER = tuple(
    (name, get_recipe(name).nominal_bits)
    for name in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
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
    is left to the planner is chosen. A plan that does not fit carries the advice of a
    smaller quant that would; with `check`, it raises NotEnoughMemory with that advice.
    """
    plan = _choose(layout, hardware, n_ctx, gpu_layers, cpu_moe_layers, cache_type)
    if not plan.fits:
        plan.advice = _smaller_quant_hint(layout, hardware, cache_type)
        if check:
            raise NotEnoughMemory(_refusal(plan), plan.advice)
    return plan


def _choose(layout, hardware, n_ctx, gpu_layers, cpu_moe_layers, cache_type) -> MemoryPlan:
    """The plan, with its notes: the first context (shrinking unless given) that fits."""
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
        f"{size_text(plan.layout.weight_bytes)}) does not fit this machine even with a "
        f"{plan.n_ctx}-token context: it needs {size_text(plan.ram_bytes)} of RAM "
        f"({size_text(hw.ram_available_bytes)} available) and {size_text(plan.gpu_bytes)} of VRAM "
        f"({size_text(hw.vram_free_bytes)} free)."
    )


def smaller_quant_that_fits(
    layout: ModelLayout, hardware: Hardware, cache_type: str = "f16"
) -> MemoryPlan | None:
    """The plan for the largest llama.cpp quant below this file's bits/weight that fits."""
    current = layout.bits_per_weight
    for name, bpw in _ladder(layout):
        if bpw >= current - 0.05:
            continue
        plan = _choose(layout.requantized(name, bpw), hardware, None, None, None, cache_type)
        if plan.fits:
            return plan
    return None


def _ladder(layout: ModelLayout) -> tuple[tuple[str, float], ...]:
    """The quants Itamae can write for this file's family: a family whose GGUF types follow
    its source tensors (DeepSeek-V4) takes no recipe of llama.cpp's quantizer, since
    llama.cpp's own graph refuses the files it makes (converters/conversion/convert.py)."""
    by_source = any(spec.gguf_types_by_source for spec in archs.all_specs()
                    if spec.arch_name == layout.arch)  # fmt: skip
    if not by_source:
        return QUANT_LADDER
    return tuple((n, b) for n, b in QUANT_LADDER if not get_recipe(n).uses_llama_quantizer)


def _smaller_quant_hint(layout: ModelLayout, hardware: Hardware, cache_type: str) -> str:
    plan = smaller_quant_that_fits(layout, hardware, cache_type)
    if plan is None and _ladder(layout) != QUANT_LADDER:
        return (
            f"Itamae writes {layout.arch} GGUFs only as Q8_0 or F32 (llama.cpp's quantizer "
            "recipes make files its own graph refuses), so no smaller file of this model "
            "fits: free memory, or run it on a bigger machine through the remote engine."
        )
    if plan is None:
        return (
            f"No llama.cpp quant down to {QUANT_LADDER[-1][0]} fits either: free memory, "
            "use a smaller model, or run it on a bigger machine through the remote engine."
        )
    quant = plan.layout.quant
    return (
        f"A {quant} file (about {size_text(plan.layout.weight_bytes)}) would fit with a "
        f"{plan.n_ctx}-token context: `itamae convert <original model folder> -o model-{quant.lower()}.gguf "
        f"--quant {quant.lower()}`."
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.llamacpp.memory_plan MODEL.gguf [--ram-gb R --vram-gb V]`: a plan."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.llamacpp.memory_plan", description=main.__doc__
    )
    parser.add_argument("model", help="a .gguf file")
    parser.add_argument("--ram-gb", type=float, help="plan for this much free RAM instead")
    parser.add_argument("--vram-gb", type=float, default=0.0, help="with --ram-gb: free VRAM")
    parser.add_argument("--ctx", type=int, help="context length (default: chosen to fit)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
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
