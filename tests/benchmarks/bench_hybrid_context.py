"""Hybrid (linear + full attention) against all-softmax attention as the context grows.

Not a test (it prints figures); run it by hand:

    python -m tests.benchmarks.bench_hybrid_context [--hidden 1024 --layers 12 --experts 32
        --top-k 4 --expert-ffn 768] [--contexts 1024,4096,16384] [--gen-tokens 16]
        [--threads 2] [--rounds 1] [--workdir DIR] [--json]

Two synthetic checkpoints of the same size, laid out as published (the test fixtures'
builder, tests/fixtures/checkpoints.py, with these dimensions): a Qwen3.5-MoE (Gated
DeltaNet layers, one full-attention layer in two here as in the fixture, shared expert) and a
Qwen3-MoE (softmax attention everywhere), both with Qwen2's real 151,936-token vocabulary
(no Qwen3.5 tokenizer is cached on this machine; the published one has ~248k). Each is run
by the torch engine on the HF folder and by llama.cpp on Itamae's Q8_0 GGUF, through
`itamae bench` in its own process (tests/benchmarks/bench_engines.py's helper): a prompt of
context - gen tokens is prefilled, then gen tokens are decoded; decode tok/s after that
prefill, prefill tok/s, llama.cpp's KV + recurrent state + compute buffer (from the
memory plan) and each run's peak RSS (both engines) are printed per context, with the ratios
and the machine's load average (the machine is shared). Order rotates per round. A cell
without a figure (a failed run, or a speed that is not a positive number) says NO FIGURE,
its error goes to stderr, and the command exits 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from pathlib import Path

from tests.benchmarks.bench_engines import itamae_bench
from tests.fixtures.llamacpp_reference import CACHE, vocabulary_tokenizer

MODELS = ("qwen3_5_moe", "qwen3_moe")
ENGINES = ("torch", "llamacpp")
# max_position_embeddings as the published config.json gives it (Qwen3.5-35B-A3B's
# text_config, Qwen3-30B-A3B), not the fixtures' 4096: the torch engine refuses a context
# beyond it (at 4096 every 16k cell failed)
PUBLISHED_MAX_POSITIONS = {"qwen3_5_moe": 262144, "qwen3_moe": 40960}


def _qwen2_tokenizer(dest: Path) -> dict[str, int]:
    """Stands in for the fixtures' tiny tokenizer: Qwen2's real one, its special ids."""
    source = vocabulary_tokenizer("qwen2")
    for f in source.iterdir():
        shutil.copy(f, dest / f.name)
    data = json.loads((source / "tokenizer.json").read_text())
    vocab = len(data["model"]["vocab"]) + len(data.get("added_tokens", []))
    eos = data["model"]["vocab"].get("<|endoftext|>") or next(
        t["id"] for t in data["added_tokens"] if t["content"] == "<|endoftext|>"
    )
    return {"vocab_size": vocab, "bos": eos, "eos": eos, "pad": eos, "endoftext": eos}


def build(arch: str, dims: argparse.Namespace, workdir: Path) -> Path:
    from tests.fixtures import checkpoints as fixtures

    max_positions = PUBLISHED_MAX_POSITIONS[arch]
    tag = f"{arch}-{dims.hidden}x{dims.layers}-{dims.experts}e{dims.top_k}-{max_positions // 1024}k"
    dest = workdir / tag
    if (dest / "config.json").is_file():
        return dest
    sizes = dict(
        hidden_size=dims.hidden, num_hidden_layers=dims.layers, num_experts=dims.experts,
        num_experts_per_tok=dims.top_k, moe_intermediate_size=dims.expert_ffn,
        num_attention_heads=dims.hidden // 64, num_key_value_heads=max(1, dims.hidden // 256),
        head_dim=64, max_position_embeddings=max_positions,
    )  # fmt: skip
    kwargs, extra = copy.deepcopy(fixtures.SPECS[arch])
    if "text_config" in kwargs:  # Qwen3.5: hybrid layers every other one, a shared expert
        kwargs["text_config"].update(sizes, shared_expert_intermediate_size=dims.expert_ffn)
        kwargs["text_config"]["layer_types"] = [
            "linear_attention" if i % 2 == 0 else "full_attention" for i in range(dims.layers)
        ]
        kwargs["text_config"].update(linear_num_key_heads=8, linear_num_value_heads=16,
                                     linear_key_head_dim=64, linear_value_head_dim=64)  # fmt: skip
        kwargs["vision_config"]["out_hidden_size"] = dims.hidden
    else:
        kwargs.update(sizes)
    saved = fixtures.SPECS[arch], fixtures.write_tokenizer
    fixtures.SPECS[arch], fixtures.write_tokenizer = (kwargs, extra), _qwen2_tokenizer
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fixtures.build_checkpoint(arch, tmp)
    finally:
        fixtures.SPECS[arch], fixtures.write_tokenizer = saved
    tmp.rename(dest)
    return dest


def gguf(folder: Path) -> Path:
    from converters.conversion.convert import convert

    dest = folder.with_name(folder.name + "-q8_0.gguf")
    if not dest.is_file():
        convert(folder, dest, "Q8_0")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--expert-ffn", type=int, default=768)
    parser.add_argument("--contexts", default="1024,4096,16384")
    parser.add_argument("--gen-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=CACHE / "bench-hybrid")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for arch in MODELS:
        folder = build(arch, args, args.workdir)
        files[arch] = {"torch": folder, "llamacpp": gguf(folder)}
    contexts = [int(c) for c in args.contexts.split(",")]
    runs = [(m, e, c) for c in contexts for m in MODELS for e in ENGINES]
    results: dict[tuple, list[dict]] = {}
    for r in range(args.rounds):
        shift = r % len(runs)
        for model, engine, ctx in runs[shift:] + runs[:shift]:
            prompt = ctx - args.gen_tokens - 8
            out = itamae_bench(files[model][engine], engine, args.threads, prompt,
                               args.gen_tokens, "--context-length", str(ctx))  # fmt: skip
            out["load_avg_1m"] = os.getloadavg()[0]
            results.setdefault((model, engine, ctx), []).append(out)
    return 1 if report(results, contexts, args) else 0


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def _planned_cache_mib(path: str | None, n_ctx: int) -> float | None:
    from engine.llamacpp.devices import Hardware
    from engine.llamacpp.gguf_layout import read_gguf_layout
    from engine.llamacpp.memory_plan import plan_memory

    if not path:
        return None
    plan = plan_memory(read_gguf_layout(path), Hardware.of(ram_gb=64), n_ctx=n_ctx)
    return (plan.kv_bytes + plan.state_bytes + plan.compute_bytes) / 2**20


def _figure(out: dict) -> str | None:
    """Why a run gives no figure (its error, or a decode speed that is not a number)."""
    if "error" in out:
        return out["error"].strip() or "failed and said nothing"
    if not out["decode_tps"] > 0 or not out["prefill_tps"] > 0:  # NaN, 0 or negative
        return f"decode {out['decode_tps']} tok/s, prefill {out['prefill_tps']} tok/s"
    return None


def rows_of(results: dict) -> list[dict]:
    rows = []
    for (model, engine, ctx), outs in sorted(results.items(), key=lambda kv: kv[0][2]):
        ok = [o for o in outs if _figure(o) is None]
        rows.append({
            "model": model, "engine": engine, "context": ctx,
            "decode_tps": _median([o["decode_tps"] for o in ok]),
            "prefill_tps": _median([o["prefill_tps"] for o in ok]),
            # llama.cpp's KV + state + compute as the memory plan gives it (within 10% of
            # llama.cpp's log, tests/test_memory_plan_llamacpp.py), and each run's own peak
            # RSS (VmHWM of the child, app/commands/bench.py): weights read + cache + buffers
            "cache_mib": _planned_cache_mib(outs[0].get("model"), ctx) if engine == "llamacpp" else None,
            "peak_rss_mib": _median([o["peak_rss_bytes"] / 2**20 for o in ok]),
            "load_avg_1m": _median([o["load_avg_1m"] for o in outs]),
            "rounds_failed": len(outs) - len(ok),
            "error": next((_figure(o)[-300:] for o in outs if _figure(o) is not None), ""),
        })  # fmt: skip
    return rows


def report(results: dict, contexts: list[int], args) -> int:
    """Prints the table (or JSON; a cell without a figure is null there, never NaN) and
    returns how many cells got no figure, each also named on stderr with its error."""
    rows = rows_of(results)
    failed = [r for r in rows if r["rounds_failed"]]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, contexts, args)
    for r in failed:
        print(f"NO FIGURE in {r['rounds_failed']} round(s): {r['model']} {r['engine']} "
              f"ctx {r['context']}: {r['error']}", file=sys.stderr)  # fmt: skip
    return len(failed)


def _cell(value: float | None, width: int, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}s}"


def print_table(rows: list[dict], contexts: list[int], args) -> None:
    print(f"threads {args.threads}, hidden {args.hidden}, {args.layers} layers, "
          f"{args.experts} experts top-{args.top_k}, decode {args.gen_tokens} tokens after the prefill")  # fmt: skip
    print(f"{'model':12s} {'engine':9s} {'ctx':>6s} {'decode/s':>9s} {'prefill/s':>10s} "
          f"{'llama.cpp KV+state+compute':>27s} {'peak RSS':>9s} {'load':>5s}")  # fmt: skip
    for row in rows:
        mib = f"{row['cache_mib']:26.0f}M" if row["cache_mib"] is not None else " " * 27
        print(f"{row['model']:12s} {row['engine']:9s} {row['context']:6d} "
              f"{_cell(row['decode_tps'], 9)} {_cell(row['prefill_tps'], 10)} {mib} "
              f"{_cell(row['peak_rss_mib'], 8, 0)}M {row['load_avg_1m']:5.1f}" + ("  NO FIGURE (see below)" if row["error"] else ""))  # fmt: skip
    by = {(r["model"], r["engine"], r["context"]): r["decode_tps"] for r in rows}
    print("ratios (decode tok/s): torch/llama.cpp per model, hybrid/softmax per engine")
    for ctx in contexts:
        pairs = [(f"{m} torch/llama.cpp", (m, "torch", ctx), (m, "llamacpp", ctx)) for m in MODELS]
        pairs += [
            (f"{e} hybrid/softmax", (MODELS[0], e, ctx), (MODELS[1], e, ctx)) for e in ENGINES
        ]
        parts = [f"{name} {by[a] / by[b]:.2f}" for name, a, b in pairs if by.get(a) and by.get(b)]
        print(f"  {ctx:6d}: " + "; ".join(parts))


if __name__ == "__main__":
    raise SystemExit(main())
