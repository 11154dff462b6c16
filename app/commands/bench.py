"""`itamae bench`: prefill and decode speed of one engine on one model.

A prompt of exactly --prompt-tokens tokens (a bilingual sentence repeated, cut by token
count) is prefilled, then --gen-tokens tokens are decoded greedily. JSON shape (DESIGN.md):
{"engine", "model", "prefill_tps", "decode_tps", "ttft_s", "peak_rss_bytes", ...}; the
torch engine adds its expert-cache figures.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from .generate import add_engine_options, load_options

FILLER = "The sushi chef slices fresh fish for each order. 板前は注文ごとに魚を切る。 "


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="prefill and decode tokens/s, TTFT, peak memory",
        description="Measure one engine's prefill and decode speed on one model.",
    )
    add_engine_options(p)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")


def peak_rss_bytes() -> int:
    """This process's own peak resident memory: VmHWM of the address space exec() made.
    Not ru_maxrss, which Linux carries across exec, so a child started by a process that
    held more memory (bench_engines, which converts the models it measures) reports the
    parent's peak instead of its own."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc (macOS: bytes)
    return peak if sys.platform == "darwin" else peak * 1024


def prompt_of(backend, n_tokens: int) -> str:
    """A raw prompt that tokenizes to n_tokens (or as close below as the text allows)."""
    words = (FILLER * (n_tokens // 4 + 8)).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word prefix with <= n_tokens tokens
        mid = (lo + hi + 1) // 2
        if len(backend.tokenize(" ".join(words[:mid]))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def run(args) -> int:
    from app import library
    from engine.types import FinalEvent, GenerationRequest, SamplingParams

    started = time.perf_counter()
    backend = library.load(args.model, engine=args.engine, **load_options(args))
    load_s = time.perf_counter() - started
    prompt = prompt_of(backend, args.prompt_tokens)
    request = GenerationRequest(
        prompt=prompt,
        sampling=SamplingParams(temperature=0.0, max_tokens=args.gen_tokens, ignore_eos=True),
        experts_per_token=args.experts_per_token,
    )
    final = None
    for event in backend.stream(request):
        if isinstance(event, FinalEvent):
            final = event
    s = final.stats
    result = {
        "engine": backend.info.extra.get("engine", args.engine),
        "model": str(args.model),
        "prefill_tps": s.prefill_tps,
        "decode_tps": s.decode_tps,
        "ttft_s": s.ttft_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "finish_reason": final.finish_reason,
        "load_s": load_s,
        "compile_s": backend.info.extra.get("compile_s", 0.0),  # part of load_s (torch engine)
        "compiled_experts": backend.info.extra.get("compiled_experts", False),
        "cache_hits": s.cache_hits,
        "cache_misses": s.cache_misses,
        "bytes_moved": s.bytes_moved,
        "hit_rate": s.cache_hits / max(1, s.cache_hits + s.cache_misses),
        "active_params": backend.info.active_params,
        "quant": backend.info.quant,
        "expert_counts": s.expert_counts,  # for a static hot set (--expert-usage)
    }
    if hasattr(backend, "prefetch_report"):  # the torch engine with prefetch on
        result.update(backend.prefetch_report())
    if final.error:
        result["error"] = final.error
    backend.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['engine']} on {args.model}: prefill {s.prefill_tps:.1f} tok/s "
              f"({s.prompt_tokens} tokens), decode {s.decode_tps:.1f} tok/s "
              f"({s.completion_tokens} tokens), TTFT {s.ttft_s:.2f}s, "
              f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB")  # fmt: skip
    return 1 if final.finish_reason == "error" else 0
