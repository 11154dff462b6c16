"""DeepSeek Sparse Attention's saving, measured: decode tokens/s at 1k, 4k and 16k tokens of
context, sparse (the lightning indexer's top 2,048 positions) against dense attention, in
the torch engine and in llama.cpp, on a ~1.1B V3.2-shaped synthetic checkpoint
(tests/benchmarks/deepseek_v32_checkpoint.py: the published attention widths, Qwen2's real
vocabulary).

Not a test (it prints figures, nothing is asserted); run it by hand:

    python -m tests.benchmarks.bench_sparse_attention [--threads 2] [--contexts 1024,4096,16384]
        [--gen-tokens 8] [--rounds 2] [--workdir DIR] [--json]

Dense: the torch engine with the indexer removed (every cached position read), llama.cpp
with the GGUF's indexer top-k raised past the context (llama.cpp keeps running the
indexer; it has no switch to skip it). Sparse at 1k equals dense by definition (the
context is within the top-k), which the 1k row shows as a ratio near 1.

A decode step's cost depends on how many positions the cache holds, not on their values,
so the context is not prefilled through the 1.1B model (16k tokens of prefill on a 2-core
machine would take most of the run): the torch engine's cache is filled with seeded
random latents, rope keys and indexer keys; llama.cpp's with a cheap model of the same
cache widths (deepseek_v32_checkpoint.FILLER) that prefills the context once, its
sequence state saved and loaded into the benchmarked model (llama_state_seq_set_data).
Each engine runs in its own process with both variants loaded, their decode steps
interleaved (sparse, dense, sparse, ...) so that a shared machine's changing load falls on
both alike; tokens/s is 1 / the median step time. Rounds alternate the engines' order and
the contexts' order; medians of the rounds reported, every round's figures kept (--json).
All with the same thread count and GOMP_SPINCOUNT as tests/benchmarks/bench_engines.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.benchmarks.bench_engines import GOMP_SPINCOUNT, REPO
from tests.benchmarks.deepseek_v32_checkpoint import (
    FILLER,
    build_v32_checkpoint,
    n_parameters,
)
from tests.fixtures.llamacpp_reference import CACHE

TOP_K_KEY = "deepseek32.attention.indexer.top_k"
DENSE_TOP_K = 1 << 20  # past any context here: every position is chosen
ENGINES = ("torch", "llamacpp")


# ---- preparing the files -------------------------------------------------------------------


def prepare(workdir: Path) -> dict[str, Path]:
    from converters.conversion.convert import convert

    src = build_v32_checkpoint(workdir / "synthetic-deepseek-v32-1b")
    filler_src = build_v32_checkpoint(workdir / "filler-deepseek-v32", FILLER)
    files = {"hf": src}
    for name, folder in (("sparse", src), ("filler", filler_src)):
        dest = workdir / f"{name}-q8_0.gguf"
        if not dest.is_file():
            convert(folder, dest, "Q8_0")
        files[name] = dest
    dense = workdir / "dense-q8_0.gguf"
    if not dense.is_file():
        shutil.copyfile(files["sparse"], dense)
        _set_top_k(dense, DENSE_TOP_K)
    files["dense"] = dense
    return files


def _set_top_k(gguf_file: Path, top_k: int) -> None:
    """Rewrite the indexer's top-k in place (a fixed-width uint32 in the header)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_file, "r+")
    field = reader.fields[TOP_K_KEY]
    field.parts[field.data[0]][0] = top_k
    reader.data.flush()


# ---- the measured processes -----------------------------------------------------------------


def _paired_steps_per_s(steps: dict, gen: int) -> dict[str, float]:
    """Decode tokens/s of each variant, their steps interleaved (sparse, dense, sparse, ...)
    so that both see the same machine load; 1 / the median step time."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up: first-call allocations
    for _ in range(gen):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: 1 / statistics.median(t) for name, t in times.items()}


def torch_worker(folder: Path, contexts: list[int], gen: int, threads: int) -> dict:
    """Decode tokens/s of the torch engine at each context, sparse and dense (the indexer
    removed), each with its own cache filled with seeded noise."""
    import torch

    import engine

    backend = engine.load(folder, engine="torch", threads=threads)
    model = backend.generator.model
    indexers = {"sparse": [layer.attn.indexer for layer in model.layers]}
    indexers["dense"] = [None] * len(model.layers)
    rng = torch.Generator().manual_seed(0)

    def filled(n: int, attention: str):
        cache = model.new_cache()
        for layer, indexer in zip(model.layers, indexers[attention], strict=True):
            a = layer.attn
            widths = [a.kv_b.shape[1], a.rope_dim] + ([indexer.head_dim] if indexer else [])
            rows = [torch.randn(1, n, w, generator=rng).to(model.dtype) for w in widths]
            cache.update(a.layer, 0, 1, *rows)
        cache.length = n
        return cache

    def stepper(attention: str, cache):
        token = torch.tensor([[1000]])

        def step():
            for layer, indexer in zip(model.layers, indexers[attention], strict=True):
                layer.attn.indexer = indexer
            with torch.no_grad():
                token[0, 0] = model.forward(token, cache)[0, -1].argmax()

        return step

    figures: dict[str, dict[int, float]] = {"sparse": {}, "dense": {}}
    for n in contexts:
        steps = {a: stepper(a, filled(n, a)) for a in figures}
        for attention, tps in _paired_steps_per_s(steps, gen).items():
            figures[attention][n] = tps
    backend.close()
    return figures


def llamacpp_worker(files: dict[str, Path], contexts: list[int], gen: int, threads: int) -> dict:
    """Decode tokens/s of llama.cpp at each context, the sparse and the dense GGUF loaded
    side by side, each cache loaded from the filler's saved state."""
    import ctypes

    import numpy as np
    from llama_cpp import Llama, llama_cpp

    n_ctx = max(contexts) + 2 * gen + 16
    models = {
        attention: Llama(model_path=str(files[attention]), n_ctx=n_ctx, n_batch=512,
                         n_threads=threads, n_threads_batch=threads, verbose=False)
        for attention in ("sparse", "dense")
    }  # fmt: skip

    def stepper(llm: Llama, n: int, state: bytes):
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(llm.ctx, buf, len(state), 0) != len(state):
            raise RuntimeError(f"llama.cpp refused the filler's {n}-token state")
        llm.n_tokens = n
        token = [1000]

        def step():
            llm.eval(token)
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            token[0] = int(logits.argmax())

        return step

    figures: dict[str, dict[int, float]] = {"sparse": {}, "dense": {}}
    for n in contexts:
        state = _filler_state(files["filler"], n, n_ctx, threads).read_bytes()
        steps = {a: stepper(llm, n, state) for a, llm in models.items()}
        for attention, tps in _paired_steps_per_s(steps, gen).items():
            figures[attention][n] = tps
    for llm in models.values():
        llm.close()
    return figures


def _filler_state(filler: Path, n: int, n_ctx: int, threads: int) -> Path:
    """The filler model's cache after an n-token prefill, saved once per context."""
    import ctypes

    import numpy as np
    from llama_cpp import Llama, llama_cpp

    out = filler.with_name(f"filler-state-{n}.bin")
    if out.is_file():
        return out
    llm = Llama(model_path=str(filler), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)  # fmt: skip
    llm.eval(np.random.default_rng(0).integers(1000, 100_000, n).tolist())
    size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(llm.ctx, buf, size, 0)
    llm.close()
    out.write_bytes(bytes(buf[:written]))
    return out


# ---- the driver ---------------------------------------------------------------------------


def run_child(files, engine_name, contexts, gen, threads) -> dict:
    payload = json.dumps({k: str(v) for k, v in files.items()})
    args = [sys.executable, "-m", "tests.benchmarks.bench_sparse_attention", "--worker",
            engine_name, payload, ",".join(map(str, contexts)), str(gen), str(threads)]  # fmt: skip
    env = dict(os.environ, GOMP_SPINCOUNT=GOMP_SPINCOUNT)
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    if done.returncode != 0:
        return {"error": done.stderr[-1500:]}
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {a: {int(n): tps for n, tps in f.items()} for a, f in figures.items()}


def worker_main(argv: list[str]) -> int:
    engine_name, payload, contexts, gen, threads = argv
    files = {k: Path(v) for k, v in json.loads(payload).items()}
    ctx = [int(c) for c in contexts.split(",")]
    if engine_name == "torch":
        figures = torch_worker(files["hf"], ctx, int(gen), int(threads))
    else:
        figures = llamacpp_worker(files, ctx, int(gen), int(threads))
    print(json.dumps(figures))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contexts", default="1024,4096,16384")
    parser.add_argument("--gen-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=CACHE / "bench-sparse-attention")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    started = time.perf_counter()
    files = prepare(args.workdir)
    prepared = time.perf_counter() - started
    rounds: dict[str, list[dict]] = {e: [] for e in ENGINES}
    loads = []
    for r in range(args.rounds):
        order = ENGINES if r % 2 == 0 else ENGINES[::-1]
        for engine_name in order:
            ctx = contexts if r % 2 == 0 else contexts[::-1]
            got = run_child(files, engine_name, ctx, args.gen_tokens, args.threads)
            if "error" in got:
                print(f"{engine_name}: {got['error']}", file=sys.stderr)
                return 1
            rounds[engine_name].append(got)
            loads.append(os.getloadavg()[0])
    medians = {
        f"{e}/{a}": {n: statistics.median(r[a][n] for r in rs) for n in contexts}
        for e, rs in rounds.items()
        for a in ("sparse", "dense")
    }
    report = {
        "parameters": n_parameters(files["hf"]),
        "threads": args.threads,
        "gen_tokens": args.gen_tokens,
        "rounds": args.rounds,
        "load_average": [min(loads), max(loads)],
        "prepare_s": round(prepared, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "decode_tps": medians,
        "every_round": rounds,
    }
    print(json.dumps(report) if args.json else _table(report, contexts))
    return 0


def _table(report: dict, contexts: list[int]) -> str:
    m = report["decode_tps"]
    lines = [
        f"DeepSeek-V3.2-shaped synthetic, {report['parameters'] / 1e9:.2f}B parameters, "
        f"{report['threads']} threads, {report['gen_tokens']} decode tokens, median of "
        f"{report['rounds']} rounds; 1-min load average {report['load_average'][0]:.1f}"
        f"-{report['load_average'][1]:.1f}",
        f"{'context':>8} | {'torch sparse':>12} {'torch dense':>12} {'saving':>7} | "
        f"{'llama.cpp sparse':>16} {'llama.cpp dense':>15} {'saving':>7}",
    ]
    for n in contexts:
        ts, td = m["torch/sparse"][n], m["torch/dense"][n]
        ls, ld = m["llamacpp/sparse"][n], m["llamacpp/dense"][n]
        lines.append(
            f"{n:>8} | {ts:>12.2f} {td:>12.2f} {ts / td:>6.2f}x | "
            f"{ls:>16.2f} {ld:>15.2f} {ls / ld:>6.2f}x"
        )
    lines.append(
        "(tokens/s, 1 / median step time, sparse and dense steps interleaved; "
        "saving = sparse / dense)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
