"""Decode speed of Itamae's llama.cpp backend against llama-cpp-python used directly.

Not a test (it reports figures); run it by hand:

    python -m tests.benchmarks.bench_llamacpp_overhead [--gen-tokens 128] [--rounds 3]
    python -m tests.benchmarks.bench_llamacpp_overhead --gpu-layers 99 --cpu-moe  # CUDA build
    python -m tests.benchmarks.bench_llamacpp_overhead --model tiny.gguf --gen-tokens 200

One synthetic ~1.2B-parameter MoE GGUF (Q8_0, random weights; hidden 1024, 12 layers,
32 experts top-4, expert FFN 768, Qwen2's real 152k vocabulary from llama.cpp's
models/ggml-vocab-qwen2.gguf) is written once under .itamae-cache/llamacpp/. In the same
process, with the same threads, context, batch, flash attention and KV type, three
decoders take turns (in rotating order) for --rounds rounds, each generating --gen-tokens greedy tokens from
the same --prompt-tokens prompt:

  raw-llama      llama_cpp.Llama.generate(): the high-level API people use directly
  raw-lowlevel   a bare loop over llama_decode + a greedy llama_sampler (the floor)
  itamae         engine.llamacpp.backend.stream() (rendering, stop strings, stats...)

Decode tokens/s is timed from the first generated token to the last (prefill excluded)
by the harness itself for all three, in wall time and in process CPU time (one thread by
default: on a shared machine CPU time measures the work, wall time also the wait). Overhead = 1 - itamae / raw (medians over rounds);
the goal is <= 5% against raw-llama. All three must generate the same tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import llama_cpp

from engine.llamacpp.backend import load
from engine.types import GenerationRequest, SamplingParams, TokenEvent
from tests.llamacpp_synthetic import find_vocab_gguf, write_synthetic_moe

REPO = Path(__file__).resolve().parents[2]


class Clock:
    """Wall and process-CPU seconds since start(); CPU time is what a busy, shared machine
    disturbs least (with one thread it is the work done, not the wait for a core)."""

    def start(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, steps: int) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return steps / wall, steps / cpu


SHAPE = dict(hidden=1024, layers=12, experts=32, top_k=4, expert_ffn=768, heads=16, kv_heads=4)
N_CTX = 1024


def model_path() -> Path:
    path = REPO / ".itamae-cache" / "llamacpp" / "bench-moe-1b-q8_0.gguf"
    if not path.exists():
        vocab = find_vocab_gguf()
        if vocab is None:
            sys.exit(
                "Needs llama.cpp's models/ggml-vocab-qwen2.gguf: `pip download --no-deps "
                "--no-binary :all: llama-cpp-python==0.3.36 -d /tmp/llcpp-sdist`, unpack it, "
                "and set ITAMAE_LLAMA_VOCAB_DIR to its vendor/llama.cpp/models."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        write_synthetic_moe(path, vocab_gguf=vocab, **SHAPE, seed=1)
        print(f"wrote {path.name} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return path


class RawLlama:
    name = "raw-llama"

    def __init__(self, path: Path, threads: int, gpu_layers: int):
        self.llm = llama_cpp.Llama(
            str(path),
            n_ctx=N_CTX,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=gpu_layers,
            flash_attn=True,
            verbose=False,
        )

    def run(self, prompt: list[int], n: int):
        out, clock = [], Clock()
        for token in self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
            out.append(token)
            if len(out) == 1:
                clock.start()
            if len(out) == n:
                break
        return out, clock.rates(len(out) - 1)

    def close(self):
        self.llm.close()


class RawLowLevel:
    """llama_decode + a greedy sampler and nothing else, on the Itamae backend's own context
    (so load parameters are identical); the cache is cleared before each run."""

    name = "raw-lowlevel"

    def __init__(self, native):
        self.native = native

    def run(self, prompt: list[int], n: int):
        native = self.native
        native.forget_all()
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        array = (llama_cpp.llama_token * len(prompt))(*prompt)
        llama_cpp.llama_decode(native.ctx, llama_cpp.llama_batch_get_one(array, len(prompt)))
        out, clock = [], Clock()
        one = (llama_cpp.llama_token * 1)()
        while True:
            token = llama_cpp.llama_sampler_sample(chain, native.ctx, -1)
            out.append(token)
            if len(out) == 1:
                clock.start()
            if len(out) == n:
                break
            one[0] = token
            llama_cpp.llama_decode(native.ctx, llama_cpp.llama_batch_get_one(one, 1))
        rates = clock.rates(len(out) - 1)
        llama_cpp.llama_sampler_free(chain)
        return out, rates


class Itamae:
    name = "itamae"

    def __init__(self, backend):
        self.backend = backend

    def run(self, prompt_text: str, n: int):
        self.backend._cached = []  # no prefix reuse across rounds: same work as the others
        self.backend.native.forget_all()
        req = GenerationRequest(prompt=prompt_text, sampling=SamplingParams(0.0, max_tokens=n))
        out, clock, rates = [], Clock(), None
        for event in self.backend.stream(req, threading.Event()):
            if isinstance(event, TokenEvent) and event.token_id is not None:
                out.append(event.token_id)
                if len(out) == 1:
                    clock.start()
                if len(out) == n:
                    rates = clock.rates(len(out) - 1)  # stop the clock at the last token
        return out, rates or clock.rates(len(out) - 1)


def _agreeing_prefix(runs: list[list[int]]) -> int:
    n = 0
    while all(len(r) > n for r in runs) and len({r[n] for r in runs}) == 1:
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-layers", type=int, default=0, help="llama.cpp n_gpu_layers")
    parser.add_argument("--cpu-moe", action="store_true", help="experts in CPU RAM (GPU builds)")
    parser.add_argument(
        "--model", help="another GGUF instead (a tiny one shows the per-token cost in us)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    path = Path(args.model) if args.model else model_path()
    options = dict(n_ctx=N_CTX, threads=args.threads, gpu_layers=args.gpu_layers)
    if args.cpu_moe:
        options["cpu_moe"] = True
    backend = load(path, **options)
    words = "The sushi chef slices tuna and salmon for the guests at the counter. "
    text = words * (args.prompt_tokens // 8 + 1)
    prompt = backend.tokenize(text)[: args.prompt_tokens]
    prompt_text = "".join(backend.native.piece(t).decode("utf-8", "replace") for t in prompt)
    assert backend.tokenize(prompt_text) == prompt, "prompt does not round-trip"

    raw = RawLlama(path, args.threads, args.gpu_layers)
    runners = [(raw, prompt), (RawLowLevel(backend.native), prompt), (Itamae(backend), prompt_text)]
    for runner, runner_prompt in runners:  # warm-up: page the weights in, fill caches
        runner.run(runner_prompt, 8)
    wall: dict[str, list[float]] = {r.name: [] for r, _ in runners}
    cpu: dict[str, list[float]] = {r.name: [] for r, _ in runners}
    tokens: dict[str, list[int]] = {}
    for round_index in range(args.rounds):
        turn = round_index % len(runners)  # rotate who goes first: load drifts over time
        for runner, runner_prompt in runners[turn:] + runners[:turn]:
            out, (wall_rate, cpu_rate) = runner.run(runner_prompt, args.gen_tokens)
            wall[runner.name].append(wall_rate)
            cpu[runner.name].append(cpu_rate)
            tokens.setdefault(runner.name, out)
    raw.close()
    placement = backend.expert_placement_report()
    backend.close()

    def overhead(rates: dict[str, list[float]], baseline: str) -> float:
        """Median over rounds of 1 - itamae/baseline, each round's runs side by side."""
        ratios = [i / b for i, b in zip(rates["itamae"], rates[baseline], strict=True)]
        return round(1 - statistics.median(ratios), 4)

    report = {
        "model": path.name,
        "params": backend.info.total_params,
        "threads": args.threads,
        "gen_tokens": args.gen_tokens,
        "prompt_tokens": len(prompt),
        "rounds": args.rounds,
        "gpu_offload": backend.plan.hardware.gpu_offload,
        "n_gpu_layers": backend.plan.gpu_layers,
        "expert_placement": {k: placement[k] for k in ("cpu_moe_layers", "effect")},
        "experts_in_cpu_ram": len(placement["tensors_in_cpu_ram"]),
        "decode_tps_wall": {k: [round(v, 2) for v in values] for k, values in wall.items()},
        "decode_tokens_per_cpu_s": {k: [round(v, 2) for v in values] for k, values in cpu.items()},
        "cpu_us_per_token_median": {
            k: round(1e6 / statistics.median(values), 1) for k, values in cpu.items()
        },
        "overhead_vs_raw_llama_wall": overhead(wall, "raw-llama"),
        "overhead_vs_raw_llama_cpu": overhead(cpu, "raw-llama"),
        "overhead_vs_raw_lowlevel_wall": overhead(wall, "raw-lowlevel"),
        "overhead_vs_raw_lowlevel_cpu": overhead(cpu, "raw-lowlevel"),
        # greedy on random weights: logits are near-ties, so a different prefill split (the
        # high-level Llama reuses its cached prompt) may flip a late argmax; report where
        "same_tokens": tokens["itamae"] == tokens["raw-llama"] == tokens["raw-lowlevel"],
        "same_tokens_for_first": _agreeing_prefix(list(tokens.values())),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
