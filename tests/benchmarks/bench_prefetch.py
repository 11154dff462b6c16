"""Next-layer expert prefetch: prediction hit rate, cache hit rate with and without it, and
decode time, at 10/25/50/100% of the experts on the fast tier.

Not a test (it prints figures, nothing is asserted); run it by hand:

    python -m tests.benchmarks.bench_prefetch [--models demo,bench] [--threads 1]
        [--prompt-tokens 32] [--gen-tokens 32] [--rounds 2] [--device cpu|cuda] [--json]

Models: the bundled demo (assets/demo/hf, its own trained routing), converted once to the
torch format (int8, memory-mapped), and the bench model (bench_engines.py's synthetic
Qwen3-MoE, random weights, near-uniform routing), its torch-int8 conversion built once
under --workdir. Each model first decodes greedily with every expert resident; the tokens it
produced are then fed to every configuration, so every run routes the same tokens (the
logits do not depend on placement or prefetch: tests/test_torch_prefetch.py).

Per budget, prefetch off and on take turns (rotated per round, medians over rounds), each
in the same process on a fresh model: on the CPU the fast tier is RAM and the slow tier the
memory-mapped file, so a prefetch is a copy out of the page cache (or the disk) by the
background thread while the calling thread runs the next layer's attention. Figures, for
the decode steps only: prediction hit rate (routed experts the early router named), cache
hit rate, bytes moved per token, wall and process CPU seconds per token (CPU time includes
the copier thread's), and the calling thread's own CPU seconds per token (with one torch
thread every op runs there, so this is the decode's critical path without the copies the
copier took off it). One thread by default: on a shared machine wall time also measures
the wait, so the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from tests.fixtures.llamacpp_reference import CACHE

REPO = Path(__file__).resolve().parents[2]
BUDGETS = (0.10, 0.25, 0.50, 1.00)
MODES = ("off", "next_layer")


def demo_model(workdir: Path) -> Path:
    from converters.formats.torch_writer import convert_to_torch

    dest = workdir / "demo-torch-int8"
    if not dest.is_dir():
        convert_to_torch(REPO / "assets" / "demo" / "hf", dest, "int8")
    return dest


def bench_model(workdir: Path) -> Path:
    from converters.formats.torch_writer import convert_to_torch
    from tests.benchmarks.bench_convert import build_checkpoint

    dest = workdir / "torch-int8"  # the same folder bench_engines.py converts into
    if not dest.is_dir():
        convert_to_torch(build_checkpoint(workdir / "synthetic-qwen3-moe-1b"), dest, "int8")
    return dest


def load_model(folder: Path, device: str, **placement):
    from engine.torch.models import model_class
    from engine.torch.transformer import PlacementOptions
    from engine.torch.weights import open_weights

    weights = open_weights(folder, torch.bfloat16, torch.device(device))
    cls = model_class(weights.config["model_type"])
    return cls(cls.Args.from_dict(weights.config), weights, PlacementOptions(**placement))


def prompt_tokens(folder: Path, n: int) -> torch.Tensor:
    """The first n tokens of bench_engines.py's bilingual filler, in the model's own
    tokenizer (so the demo routes real text, as its recorded usage counts did)."""
    from tokenizers import Tokenizer

    from tests.benchmarks.bench_engines import FILLER

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(FILLER * n).ids
    return torch.tensor([ids[:n]])


def greedy_tokens(folder: Path, device: str, prompt: torch.Tensor, n: int) -> list[int]:
    model = load_model(folder, device, expert_budget=1.0)
    cache = model.new_cache()
    logits = model.forward(prompt, cache)
    fed = []
    for _ in range(n):
        fed.append(int(logits[0, -1].argmax()))
        logits = model.forward(torch.tensor([[fed[-1]]]), cache)
    return fed


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(folder, device, prompt, fed, budget, prefetch) -> dict:
    model = load_model(folder, device, expert_budget=budget, prefetch=prefetch)
    kv = model.new_cache()
    model.forward(prompt, kv)  # prefill: not counted
    c, before = model.cache, model.cache.counters.snapshot()
    sync(device)
    wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    for token in fed:
        model.forward(torch.tensor([[token]]), kv)
    sync(device)
    main = time.thread_time() - main
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    c.join_all()
    c.copier.close()
    hits, misses = c.counters.hits - before.hits, c.counters.misses - before.misses
    p = c.prefetch_counters
    return {
        "budget": budget, "prefetch": prefetch,
        "hit_rate": hits / max(1, hits + misses),
        "prediction_hit_rate": p.prediction_hit_rate if prefetch != "off" else None,
        "prefetched_per_token": p.prefetched / len(fed),
        "bytes_moved_per_token": (c.counters.bytes_moved - before.bytes_moved) / len(fed),
        "wall_s_per_token": wall / len(fed), "cpu_s_per_token": cpu / len(fed),
        "main_thread_cpu_s_per_token": main / len(fed),
    }  # fmt: skip


def table(folder: Path, device: str, n_prompt: int, n_gen: int, rounds: int) -> list[dict]:
    prompt = prompt_tokens(folder, n_prompt)
    fed = greedy_tokens(folder, device, prompt, n_gen)
    rows = []
    for budget in BUDGETS:
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for r in range(rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]  # rotate: neither always goes first
            for mode in order:
                runs[mode].append(measure(folder, device, prompt, fed, budget, mode))
        for mode in MODES:
            row = dict(runs[mode][0])
            for key in ("wall_s_per_token", "cpu_s_per_token", "main_thread_cpu_s_per_token"):
                row[key] = statistics.median(r[key] for r in runs[mode])
            rows.append(row)
        off, on = rows[-2], rows[-1]
        print(f"  {budget:4.0%}: prediction {on['prediction_hit_rate']:.2f}; hit rate "
              f"{off['hit_rate']:.2f} -> {on['hit_rate']:.2f}; "
              f"{off['bytes_moved_per_token'] / 2**20:.2f} -> {on['bytes_moved_per_token'] / 2**20:.2f} MiB/token; "
              f"wall {off['wall_s_per_token'] * 1e3:.1f} -> {on['wall_s_per_token'] * 1e3:.1f} ms/token "
              f"({off['wall_s_per_token'] / on['wall_s_per_token']:.2f}x), CPU "
              f"{off['cpu_s_per_token'] * 1e3:.1f} -> {on['cpu_s_per_token'] * 1e3:.1f} ms/token, "
              f"calling thread's CPU {off['main_thread_cpu_s_per_token'] * 1e3:.1f} -> "
              f"{on['main_thread_cpu_s_per_token'] * 1e3:.1f} ms/token",
              file=sys.stderr, flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="demo,bench")
    p.add_argument("--workdir", type=Path, default=CACHE / "bench")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    builders = {"demo": demo_model, "bench": bench_model}
    report = {"device": args.device, "threads": args.threads, "tables": {}}
    for name in args.models.split(","):
        folder = builders[name](args.workdir)
        print(f"{name} ({folder.name}), load average {os.getloadavg()[0]:.2f}:", file=sys.stderr)
        report["tables"][name] = table(
            folder, args.device, args.prompt_tokens, args.gen_tokens, args.rounds
        )
    report["load_average_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
