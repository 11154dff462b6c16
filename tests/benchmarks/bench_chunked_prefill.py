"""Chunked prefill of a small softmax-attention model at long contexts: the causal bias built
once per chunk (attention.causal_bias) against the bool mask built per layer and converted
per call (the path before it), in one process.

Not a test (it prints figures); run it by hand:

    python -m tests.benchmarks.bench_chunked_prefill [--arch qwen3_moe] [--positions 16384]
        [--rounds 1] [--threads 2] [--dtype bfloat16]

The tests' tiny checkpoint of --arch (its max_position_embeddings raised to the positions),
random token ids, prefilled in chunks of generate.PREFILL_CHUNK as the engine runs a prompt.
Prints wall and CPU seconds (process time, all threads) per prefill, the largest difference
of the last logits between the two, and the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="qwen3_moe")
    p.add_argument("--positions", type=int, default=16384)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from engine.torch import attention
    from engine.torch.generate import PREFILL_CHUNK
    from tests.fixtures.checkpoints import fixture_path
    from tests.test_torch_parity import load_model

    n = args.positions
    model = load_model(fixture_path(args.arch), getattr(torch, args.dtype), compile=False)
    model.args.max_position_embeddings = n
    ids = torch.randint(0, model.embed.shape[0], (1, n), generator=torch.Generator().manual_seed(0))
    once = attention.causal_bias

    def per_layer(t, start, window, device, dtype):  # the bool mask, every layer and call
        return attention.causal_mask(t, start, window, device)

    modes = {"bias once per chunk": once, "bool mask per layer": per_layer}
    print(f"{args.arch} {args.dtype}, {n} positions in chunks of {PREFILL_CHUNK}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    last = {}
    for r in range(args.rounds):
        names = list(modes)[r % 2 :] + list(modes)[: r % 2]
        for name in names:
            attention.causal_bias = modes[name]
            kv = model.new_cache()
            wall, cpu = time.perf_counter(), time.process_time()
            for at in range(0, n, PREFILL_CHUNK):
                logits = model.forward(ids[:, at : at + PREFILL_CHUNK], kv)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            last[name] = logits.float()
            print(f"round {r + 1} {name:<22} {wall:7.2f} s wall {cpu:7.2f} s CPU", flush=True)
    attention.causal_bias = once
    diff = (last["bias once per chunk"] - last["bool mask per layer"]).abs().max().item()
    print(f"last logits differ by {diff:.3g}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
