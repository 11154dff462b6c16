"""The GPU hybrid: torch engine decode against llama.cpp's at the same share of experts in
VRAM, at 10/25/50/100% resident. Needs a CUDA GPU, torch with CUDA and a CUDA build of
llama-cpp-python; tests/benchmarks/torch_gpu_check.sh runs it.

    python -m tests.benchmarks.bench_gpu_hybrid [--workdir DIR] [--prompt-tokens 128]
        [--gen-tokens 64] [--threads 8] [--rounds 2] [--json]

The model is bench_engines.py's synthetic Qwen3-MoE (12 layers, 32 experts top-4, random
weights), as torch-int8 for the torch engine and Q8_0 for llama.cpp. Same VRAM use: the
torch engine keeps a fraction b of all routed experts in GPU slots (`expert_budget=b`, the
rest computed on the CPU out of the memory-mapped file or moved in, as the cost model says,
overlapped with the GPU's work), llama.cpp keeps every block on the GPU except the routed
experts of the first round((1 - b) x 12) blocks (`--n-cpu-moe`), which llama.cpp computes
on the CPU. The torch engine runs with prefetch off and on (its prediction hit rate
printed). Each configuration decodes greedily in its own turn, rounds rotated, medians of
decode tokens/s (the engines' own Stats), the GPU memory each one holds beside them
(torch: peak allocated; llama.cpp: its CUDA model buffers plus KV and compute).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path

import torch

from tests.fixtures.llamacpp_reference import CACHE

BUDGETS = (0.10, 0.25, 0.50, 1.00)


def files(workdir: Path) -> tuple[Path, Path]:
    from converters.conversion.convert import convert
    from tests.benchmarks.bench_convert import build_checkpoint
    from tests.benchmarks.bench_prefetch import bench_model

    torch_int8 = bench_model(workdir)
    gguf = workdir / "synthetic-q8_0.gguf"  # the name bench_engines.py gives it
    if not gguf.is_file():
        convert(build_checkpoint(workdir / "synthetic-qwen3-moe-1b"), gguf, "Q8_0")
    return torch_int8, gguf


def decode(backend, prompt_tokens: int, gen: int) -> float:
    from app.commands.bench import prompt_of
    from engine.types import FinalEvent, GenerationRequest, SamplingParams

    req = GenerationRequest(
        prompt=prompt_of(backend, prompt_tokens),
        sampling=SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True),
    )
    final = [e for e in backend.stream(req) if isinstance(e, FinalEvent)][-1]
    if final.error:
        raise RuntimeError(final.error)
    return final.stats.decode_tps


def torch_run(folder, budget, prefetch, threads, n, g) -> dict:
    from engine.torch.backend import load

    torch.cuda.reset_peak_memory_stats()
    backend = load(folder, device="cuda", expert_budget=budget, prefetch=prefetch,
                   threads=threads)  # fmt: skip
    try:
        tps = decode(backend, n, g)
        out = {"decode_tps": tps, "vram_mib": torch.cuda.max_memory_allocated() / 2**20}
        c = backend.model.cache.counters
        out["hit_rate"] = c.hits / max(1, c.hits + c.misses)
        out.update(backend.prefetch_report())
        return out
    finally:
        backend.close()
        gc.collect()
        torch.cuda.empty_cache()


def llamacpp_run(gguf, budget, threads, n, g) -> dict:
    from engine.llamacpp.backend import load

    probe_layers = 12  # bench_convert.SHAPES["num_hidden_layers"]
    cpu_moe = probe_layers - round(budget * probe_layers)
    backend = load(gguf, n_ctx=n + g + 16, gpu_layers=99, cpu_moe=cpu_moe, threads=threads)
    try:
        tps = decode(backend, n, g)
        buffers = backend.native.model_buffers_mib()
        vram = sum(v for k, v in buffers.items() if not ("CPU" in k or "Host" in k))
        return {"decode_tps": tps, "vram_model_mib": vram, "n_cpu_moe": cpu_moe}
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=CACHE / "bench")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure", file=sys.stderr)
        return 1
    a.workdir.mkdir(parents=True, exist_ok=True)
    torch_int8, gguf = files(a.workdir)
    n, g, t = a.prompt_tokens, a.gen_tokens, a.threads
    configs = {}
    for b in BUDGETS:
        configs[(b, "torch")] = lambda b=b: torch_run(torch_int8, b, "off", t, n, g)
        configs[(b, "torch prefetch")] = lambda b=b: torch_run(torch_int8, b, "next_layer", t, n, g)
        configs[(b, "llama.cpp")] = lambda b=b: llamacpp_run(gguf, b, t, n, g)
    results: dict = {key: [] for key in configs}
    keys = list(configs)
    for r in range(a.rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotated
            results[key].append(configs[key]())
    rows = []
    print(f"{torch.cuda.get_device_name()}, {t} threads, prompt {n}, decode {g}:", file=sys.stderr)
    for b in BUDGETS:
        med = {}
        for name in ("torch", "torch prefetch", "llama.cpp"):
            runs = results[(b, name)]
            med[name] = dict(runs[-1], decode_tps=statistics.median(x["decode_tps"] for x in runs))
        ratio = med["torch"]["decode_tps"] / med["llama.cpp"]["decode_tps"]
        ratio_pf = med["torch prefetch"]["decode_tps"] / med["llama.cpp"]["decode_tps"]
        pf = med["torch prefetch"]
        print(f"  {b:4.0%} resident: torch {med['torch']['decode_tps']:7.1f} tok/s "
              f"({med['torch']['vram_mib']:.0f} MiB), prefetch {pf['decode_tps']:7.1f} "
              f"(prediction {pf.get('prefetch_prediction_hit_rate', 0):.2f}, hit rate "
              f"{med['torch']['hit_rate']:.2f} -> {pf['hit_rate']:.2f}), llama.cpp n_cpu_moe="
              f"{med['llama.cpp']['n_cpu_moe']} {med['llama.cpp']['decode_tps']:7.1f} tok/s "
              f"({med['llama.cpp']['vram_model_mib']:.0f} MiB weights): {ratio:.2f}x / "
              f"{ratio_pf:.2f}x", file=sys.stderr, flush=True)  # fmt: skip
        rows.append({"budget": b, **{k: v for k, v in med.items()}})
    if a.json:
        print(
            json.dumps({"rows": rows, "rounds": {f"{k[0]} {k[1]}": v for k, v in results.items()}})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
