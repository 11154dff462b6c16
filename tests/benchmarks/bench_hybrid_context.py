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
prefill, prefill tok/s and llama.cpp's KV + recurrent state + compute buffer (from the
memory plan) are printed per context, with the ratios
and the machine's load average (the machine is shared). Order rotates per round.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from pathlib import Path

from tests.benchmarks.bench_engines import itamae_bench
from tests.fixtures.llamacpp_reference import CACHE, vocabulary_tokenizer

MODELS = ("qwen3_5_moe", "qwen3_moe")
ENGINES = ("torch", "llamacpp")


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

    tag = f"{arch}-{dims.hidden}x{dims.layers}-{dims.experts}e{dims.top_k}"
    dest = workdir / tag
    if (dest / "config.json").is_file():
        return dest
    sizes = dict(
        hidden_size=dims.hidden, num_hidden_layers=dims.layers, num_experts=dims.experts,
        num_experts_per_tok=dims.top_k, moe_intermediate_size=dims.expert_ffn,
        num_attention_heads=dims.hidden // 64, num_key_value_heads=max(1, dims.hidden // 256),
        head_dim=64,
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
    report(results, contexts, args)
    return 0


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def _planned_cache_mib(path: str | None, n_ctx: int) -> float:
    from engine.llamacpp.devices import Hardware
    from engine.llamacpp.gguf_layout import read_gguf_layout
    from engine.llamacpp.memory_plan import plan_memory

    if not path:
        return float("nan")
    plan = plan_memory(read_gguf_layout(path), Hardware.of(ram_gb=64), n_ctx=n_ctx)
    return (plan.kv_bytes + plan.state_bytes + plan.compute_bytes) / 2**20


def report(results: dict, contexts: list[int], args) -> None:
    rows = []
    for (model, engine, ctx), outs in sorted(results.items(), key=lambda kv: kv[0][2]):
        ok = [o for o in outs if "error" not in o]
        rows.append({
            "model": model, "engine": engine, "context": ctx,
            "decode_tps": _median([o["decode_tps"] for o in ok]),
            "prefill_tps": _median([o["prefill_tps"] for o in ok]),
            # ru_maxrss survives exec (the parent's high-water mark shows through), so the
            # memory column is llama.cpp's KV + state + compute as the memory plan gives it
            # (within 10% of llama.cpp's log, tests/test_memory_plan_llamacpp.py)
            "cache_mib": _planned_cache_mib(outs[0].get("model"), ctx) if engine == "llamacpp" else 0,
            "load_avg_1m": _median([o["load_avg_1m"] for o in outs]),
            "error": next((o["error"][-300:] for o in outs if "error" in o), ""),
        })  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"threads {args.threads}, hidden {args.hidden}, {args.layers} layers, "
          f"{args.experts} experts top-{args.top_k}, decode {args.gen_tokens} tokens after the prefill")  # fmt: skip
    print(f"{'model':12s} {'engine':9s} {'ctx':>6s} {'decode/s':>9s} {'prefill/s':>10s} "
          f"{'llama.cpp KV+state+compute':>27s} {'load':>5s}")  # fmt: skip
    for row in rows:
        print(f"{row['model']:12s} {row['engine']:9s} {row['context']:6d} {row['decode_tps']:9.1f} "
              f"{row['prefill_tps']:10.1f} {row['cache_mib']:26.0f}M {row['load_avg_1m']:5.1f} "
              f"{row['error'][:80]}")  # fmt: skip
    by = {(r["model"], r["engine"], r["context"]): r for r in rows}
    print("ratios (decode tok/s): torch/llama.cpp per model, hybrid/softmax per engine")
    for ctx in contexts:
        parts = []
        for model in MODELS:
            t, lc = by.get((model, "torch", ctx)), by.get((model, "llamacpp", ctx))
            if t and lc:
                parts.append(f"{model} torch/llama.cpp {t['decode_tps'] / lc['decode_tps']:.2f}")
        for engine in ENGINES:
            h, s = by.get((MODELS[0], engine, ctx)), by.get((MODELS[1], engine, ctx))
            if h and s:
                parts.append(f"{engine} hybrid/softmax {h['decode_tps'] / s['decode_tps']:.2f}")
        print(f"  {ctx:6d}: " + "; ".join(parts))


if __name__ == "__main__":
    raise SystemExit(main())
