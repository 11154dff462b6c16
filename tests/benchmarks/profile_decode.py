"""Where a torch-engine decode step goes: the forward pass timed alone and under torch.profiler.

Not a test (it prints figures); run it by hand on a torch-format folder, e.g. the one
bench_engines converts:

    python -m tests.benchmarks.profile_decode .itamae-cache/llama-cpp-sdist/bench/torch-int8
        [--threads 2] [--compile auto|off] [--prompt-tokens 256] [--steps 30] [--rows 25]

Prefills --prompt-tokens random tokens, then times --steps single-token forward passes
(random tokens, so routing varies as in real decoding) and prints the median and the
profiler's table of the 10 steps after them, sorted by own CPU time.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as app/cli.py, before torch loads

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", default="auto")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    from engine.torch.backend import load

    model = load(args.model, threads=args.threads, compile=args.compile).model
    print(f"threads {torch.get_num_threads()}, compiled experts {model.fused is not None}, "
          f"compiled step {getattr(model, 'step', None) is not None}, "
          f"compile {model.compile_s:.1f} s")  # fmt: skip
    rng = random.Random(0)
    vocab = model.embed.shape[0]
    kv = model.new_cache()
    model.forward(torch.tensor([[rng.randrange(vocab) for _ in range(args.prompt_tokens)]]), kv)
    times = []
    for _ in range(args.steps):
        token = torch.tensor([[rng.randrange(vocab)]])
        started = time.perf_counter()
        model.forward(token, kv)
        times.append(time.perf_counter() - started)
    times.sort()
    print(
        f"decode step: median {times[len(times) // 2] * 1e3:.1f} ms, best {times[0] * 1e3:.1f} ms"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            model.forward(torch.tensor([[rng.randrange(vocab)]]), kv)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
