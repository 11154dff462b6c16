"""A decode step at long contexts: attention reading the bf16 KV cache in place
(kv_attention.py) against converting it to float32 first, in one process.

Not a test (it prints figures); run it by hand on a bf16 torch-format folder whose
max_position_embeddings covers the positions, e.g. the bench model:

    python -m tests.benchmarks.bench_long_decode .itamae-cache/llama-cpp-sdist/bench/torch-int8
        [--threads 2] [--positions 1024,4096,16384] [--steps 8] [--rounds 3]

The KV cache is filled directly with random keys and values (normal, unit variance: what
the timing depends on is the bytes read, not their values; a 16k prefill of the bench model
takes minutes on two cores), at the capacity the cache itself would allocate. Each step
decodes one random token at the given position and the cache is cut back after it, so
every step reads the same length. Per position, the candidates run in turn (rotating which
goes first each round): the compiled decode step and the op-by-op forward pass, each with
the kernel and with the float32 copy. Figures: best and median milliseconds a step (wall)
and CPU milliseconds a step (process time, all threads), best over the rounds.
A second table times one layer's attention alone, against the library options: the float32
copy + matmuls (the old path), oneDNN's bf16 matmul (scores rounded to bf16) and
scaled_dot_product_attention (bf16, its CPU flash kernel), with each one's largest error
against a float64 reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as app/cli.py, before torch loads

import argparse  # noqa: E402
import functools  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def fill_cache(model, positions: int, seed: int = 0):
    """A KV cache holding `positions` random keys and values in every layer."""
    from engine.torch.kv_cache import GROW

    a = model.layers[0].attn
    kv = model.new_cache()
    capacity = min(-(-(positions + 1) // GROW) * GROW, kv.max_positions)
    gen = torch.Generator().manual_seed(seed)
    shape = (1, a.n_kv_heads, capacity, a.head_dim)
    for i in range(len(model.layers)):
        kv.layers[i] = [torch.randn(shape, generator=gen).to(model.dtype) for _ in range(2)]
    kv.length = positions
    return kv


def time_steps(fn, steps: int) -> tuple[list[float], float]:
    """(wall seconds per call, CPU seconds per call over all of them)."""
    walls, cpu = [], time.process_time()
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - started)
    return walls, (time.process_time() - cpu) / steps


def decode_at(model, kv, n: int, compiled: bool, rng, vocab: int) -> None:
    """One random token decoded at position n; the cache is cut back to n after it."""
    model.forward(torch.tensor([[rng.randrange(vocab)]]), kv, compiled=compiled)
    kv.truncate(n)


def bench_steps(model, steps_by_mode: dict, positions: list[int], steps: int, rounds: int):
    from engine.torch import kv_attention

    rng = random.Random(0)
    vocab = model.embed.shape[0]
    print(f"\n{'positions':>9} {'mode':<26} {'best ms':>8} {'median ms':>9} {'CPU ms':>7}")
    for n in positions:
        kv = fill_cache(model, n)
        results = {mode: ([], []) for mode in steps_by_mode}
        modes = list(steps_by_mode)
        for r in range(rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                step, in_place = steps_by_mode[mode]
                kv_attention.READ_IN_PLACE = in_place
                model.step = step

                one = functools.partial(decode_at, model, kv, n, step is not None, rng, vocab)
                one()  # a first call after switching (caches, page faults) is not timed
                walls, cpu = time_steps(one, steps)
                results[mode][0].extend(walls)
                results[mode][1].append(cpu)
        for mode, (walls, cpus) in results.items():
            print(f"{n:>9} {mode:<26} {min(walls) * 1e3:8.1f} "
                  f"{statistics.median(walls) * 1e3:9.1f} {min(cpus) * 1e3:7.1f}")  # fmt: skip
        del kv
    kv_attention.READ_IN_PLACE = True


def bench_attention(model, positions: list[int], rounds: int) -> None:
    """One layer's decode attention alone: the kernel against the library options."""
    from engine.torch import kv_attention
    from engine.torch.attention import decode_attention

    a = model.layers[0].attn
    hq, hkv, d = a.n_heads, a.n_kv_heads, a.head_dim
    gen = torch.Generator().manual_seed(1)

    def copy(q, k, v):  # the old path: float32 copies of K and V
        g = q.reshape(1, hkv, hq // hkv, d).float()
        p = ((g @ k.float().transpose(-1, -2)) * d**-0.5).softmax(-1)
        return (p @ v.float()).to(q.dtype).reshape(1, hq, 1, d)

    def onednn_bf16(q, k, v):
        g = q.reshape(1, hkv, hq // hkv, d)
        p = ((g @ k.transpose(-1, -2)).float() * d**-0.5).softmax(-1)
        return (p.to(q.dtype) @ v).reshape(1, hq, 1, d)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    candidates = {"kernel (decode_attention)": decode_attention, "float32 copy": copy,
                  "oneDNN bf16 matmul": onednn_bf16, "sdpa bf16": sdpa}  # fmt: skip
    print(f"\none layer's attention ({hq} query heads, {hkv} KV heads of {d}, bf16 cache)")
    print(f"{'positions':>9} {'candidate':<26} {'best ms':>8} {'CPU ms':>7} {'max err':>9}")
    for n in positions:
        k, v = (torch.randn(1, hkv, n, d, generator=gen).bfloat16() for _ in range(2))
        q = (torch.randn(1, hq, 1, d, generator=gen) * 3).bfloat16()  # logits up to ~10
        g = q.reshape(1, hkv, hq // hkv, d).double()
        p = ((g @ k.double().transpose(-1, -2)) * d**-0.5).softmax(-1)
        ref = (p @ v.double()).reshape(1, hq, 1, d)
        best = {name: [1e9, 1e9] for name in candidates}
        names = list(candidates)
        for r in range(rounds * 3):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                kv_attention.READ_IN_PLACE = True
                walls, cpu = time_steps(functools.partial(candidates[name], q, k, v), 5)
                best[name] = [min(best[name][0], min(walls)), min(best[name][1], cpu)]
        for name, fn in candidates.items():
            err = (fn(q, k, v).double() - ref).abs().max().item()
            print(f"{n:>9} {name:<26} {best[name][0] * 1e3:8.3f} {best[name][1] * 1e3:7.3f} "
                  f"{err:9.2e}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--positions", default="1024,4096,16384")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-steps", action="store_true", help="only the attention table")
    args = p.parse_args(argv)
    positions = [int(x) for x in args.positions.split(",")]
    from engine.torch import kv_attention
    from engine.torch.backend import load
    from engine.torch.compiled_step import DecodeStep

    print(f"kernel available: {kv_attention.available()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    model = load(args.model, threads=args.threads, compile="auto").model
    assert model.dtype == torch.bfloat16, "a bf16 model: the kernel reads bf16 caches"
    if not args.skip_steps:
        steps_by_mode = {"op by op, kernel": (None, True), "op by op, float32 copy": (None, False)}
        if model.step is not None:
            kv_attention.READ_IN_PLACE = False  # graphs key on it: a second set, compiled now
            copy_step = DecodeStep(model)
            copy_step.warm_up()
            kv_attention.READ_IN_PLACE = True
            compiled = {"compiled, kernel": (model.step, True),
                        "compiled, float32 copy": (copy_step, False)}  # fmt: skip
            steps_by_mode = {**compiled, **steps_by_mode}
        bench_steps(model, steps_by_mode, positions, args.steps, args.rounds)
    bench_attention(model, positions, args.rounds)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
