"""Engines side by side on a ~1B synthetic MoE: the torch engine, llama.cpp, transformers.

Not a test (it prints figures, nothing is asserted); run it by hand:

    python -m tests.benchmarks.bench_engines [--threads 2] [--prompt-tokens 256]
        [--gen-tokens 64] [--rounds 3] [--workdir DIR] [--skip-transformers] [--json]
        [--shape qwen3-30b-a3b --layers 2] [--skip-startup] [--only 'torch int8,...']

The checkpoint is tests/benchmarks/bench_convert.py's synthetic Qwen3-MoE (hidden 1024,
12 layers, 32 experts top-4, expert FFN 768, Qwen2's 151,936-token vocabulary, bf16, ~1.3B
parameters); `--shape` swaps in a published model's layer shapes (Qwen3-30B-A3B: hidden 2048,
128 experts top-8, expert FFN 768) with --layers decoder layers. It is converted once (cached in --workdir) to the torch format (int8, int4)
and to GGUF (Q8_0, Q4_0) with Itamae's converters. Every measurement runs in its own
process, one after the other, all with the same thread count, in --rounds rounds whose
order rotates (medians reported, every round's figures kept):
- `itamae bench --engine torch` on torch-int8 (the default: the compiled decode step with
  the compiled expert kernel in it; "experts only", ITAMAE_COMPILE_STEP=0: the expert kernel
  alone, decode op by op; "plain", `--compile off`: the per-expert kernels op by op) and
  torch-int4 (default: int4_kernel.py's VNNI kernel, with the step; without the step; with
  ITAMAE_INT4_KERNEL=0, torch's `_weight_int4pack_mm_for_cpu`; and converted with the output
  layer int8, as the recipe was before),
- `itamae bench --engine llamacpp` on the Q8_0 and Q4_0 GGUFs,
- raw llama-cpp-python (Llama.eval, greedy argmax) on the same GGUFs,
- transformers eager in bf16 on the HF folder.
Start-up: the torch engine's load time with an empty Inductor cache (first start, with the
kernel compile) and again with the cache that start left (second start).
Roofline: bytes a decode step must read (active experts, all other matrices, one embedding
row) x decode tokens/s / this machine's measured read bandwidth. Then the expert cache:
decode tokens/s, hit rate and bytes moved per token for budgets 10/25/50/100% under each
policy, with RAM as the fast tier and the memory-mapped file as the slow one, on this
model's near-uniform routing and (when assets/demo holds the demo model) on the demo's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from app.commands.bench import peak_rss_bytes
from tests.benchmarks.bench_convert import SHAPES, build_checkpoint
from tests.benchmarks.roofline import (
    gguf_active_bytes,
    hf_active_bytes,
    read_bandwidth,
    torch_format_active_bytes,
)
from tests.fixtures.llamacpp_reference import CACHE

REPO = Path(__file__).resolve().parents[2]
FILLER = "The sushi chef slices fresh fish for each order. 板前は注文ごとに魚を切る。 "
BUDGETS = (0.10, 0.25, 0.50, 1.00)
# --shape: the published model's layer shapes (its config.json), fewer layers so that the
# checkpoint and its four conversions fit a small shared machine
LAYER_SHAPES = {
    "qwen3-30b-a3b": dict(hidden_size=2048, num_experts=128, num_experts_per_tok=8,
                          moe_intermediate_size=768, intermediate_size=6144,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128),
}  # fmt: skip
POLICIES = ("lru", "frequency", "static")


# ---- preparing the files -------------------------------------------------------------------


def prepare(workdir: Path) -> dict[str, Path]:
    from converters.conversion.convert import convert
    from converters.formats.torch_writer import convert_to_torch

    src = build_checkpoint(workdir / "synthetic-qwen3-moe-1b")
    files = {"hf": src}
    # torch-int4-int8-head: the int4 recipe as it was before its output layer went int4
    for name, quant, int4_head in (("torch-int8", "int8", False), ("torch-int4", "int4", True),
                                   ("torch-int4-int8-head", "int4", False)):  # fmt: skip
        dest = workdir / name
        if dest.is_dir() and not _schemes_current(dest, int4_head):
            shutil.rmtree(dest)  # converted before a recipe change (the int4 head): again
        if not dest.is_dir():
            convert_to_torch(src, dest, quant, int4_head=int4_head)
        files[name] = dest
    for recipe in ("Q8_0", "Q4_0"):
        dest = workdir / f"synthetic-{recipe.lower()}.gguf"
        if not dest.is_file():
            convert(src, dest, recipe)
        files[recipe] = dest
    return files


def _schemes_current(dest: Path, int4_head: bool) -> bool:
    """Every tensor of a cached conversion has the scheme today's writer gives it."""
    from converters.formats.torch_format import MANIFEST
    from converters.formats.torch_writer import _scheme_for

    m = json.loads((dest / MANIFEST).read_text())
    attention = m["recipe"] == "int4"
    return all(t["scheme"] == _scheme_for(name, t["shape"], m["rest"], int4_head, attention)
               for name, t in m["tensors"].items())  # fmt: skip


# ---- child processes ----------------------------------------------------------------------


# OpenMP workers that spin between parallel regions for libgomp's default 300,000 rounds
# steal the only other core on a busy 2-core machine (one 1536x1024 int8 matvec: 4.2 ms
# instead of 0.1 ms), and workers that sleep at once (PASSIVE) pay a wake-up on every small
# op of a decode step. Every child (torch and llama.cpp, both built with OpenMP) runs with
# the setting `itamae` itself uses (app/cli.py): a short spin. --omp-wait-policy overrides.
GOMP_SPINCOUNT = "10000"


def child(args: list[str], timeout: int = 1800, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    result = _last_json(out.stdout)
    if out.returncode != 0:
        # `itamae bench --json` reports a failed generation in its JSON on stdout and exits
        # 1 with nothing on stderr; a killed child (out of memory) has neither
        said = (result or {}).get("error") or out.stderr.strip()[-1500:]
        return {"error": said or f"exited with {out.returncode} and said nothing"}
    return result if result is not None else {"error": f"printed no JSON: {out.stdout[-300:]}"}


def _last_json(stdout: str) -> dict | None:
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def itamae_bench(model: Path, engine: str, threads: int, prompt: int, gen: int, *extra,
                 env: dict | None = None) -> dict:  # fmt: skip
    return child(
        ["-m", "app.cli", "bench", "--model", str(model), "--engine", engine,
         "--threads", str(threads), "--prompt-tokens", str(prompt), "--gen-tokens", str(gen),
         "--json", *extra], env=env,
    )  # fmt: skip


def prompt_ids(tokenize, n: int) -> list[int]:
    ids = tokenize(FILLER * (n // 8 + 4))
    return ids[:n]


def raw_llama_cpp(gguf: str, threads: int, prompt: int, gen: int) -> dict:
    """llama-cpp-python's low level loop: eval the prompt, then argmax + eval per token."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=prompt + gen + 16, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)  # fmt: skip
    ids = prompt_ids(lambda t: llm.tokenize(t.encode(), add_bos=False), prompt)
    started = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - started
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    first = time.perf_counter()
    for _ in range(gen - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode_s = time.perf_counter() - first
    return {
        "engine": "llama-cpp-python (raw)", "model": gguf, "prefill_tps": len(ids) / prefill_s,
        "decode_tps": (gen - 1) / decode_s, "ttft_s": first - started,
        "peak_rss_bytes": peak_rss_bytes(),
    }  # fmt: skip


def transformers_eager(folder: str, threads: int, prompt: int, gen: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    ids = torch.tensor([prompt_ids(lambda t: tok(t).input_ids, prompt)])
    with torch.inference_mode():
        started = time.perf_counter()
        out = model(ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        first = time.perf_counter()
        past = out.past_key_values
        for _ in range(gen - 1):
            out = model(token, cache=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - first
    return {
        "engine": "transformers eager bf16", "model": folder,
        "prefill_tps": ids.shape[1] / (first - started), "decode_tps": (gen - 1) / decode_s,
        "ttft_s": first - started,
        "peak_rss_bytes": peak_rss_bytes(),
        "experts_implementation": str(getattr(model.config, "_experts_implementation", "")),
    }  # fmt: skip


# ---- the expert cache table ---------------------------------------------------------------


def cache_table(
    model: Path, threads: int, prompt: int, gen: int, workdir: Path, *routing
) -> list[dict]:
    """`routing`: extra bench flags, e.g. ("--uniform-routing-seed", "0")."""
    recorded = itamae_bench(
        model, "torch", threads, prompt, gen, "--expert-budget", "1.0", *routing
    )
    usage_file = workdir / f"usage-{model.name}.json"
    usage_file.write_text(json.dumps({"expert_counts": recorded.get("expert_counts")}))
    rows = []
    for policy in POLICIES:
        for budget in BUDGETS:
            extra = ["--expert-budget", str(budget), "--cache-policy", policy, *routing]
            if policy == "static":
                extra += ["--expert-usage", str(usage_file)]
            r = itamae_bench(model, "torch", threads, prompt, gen, *extra)
            r.update(policy=policy, budget=budget)
            steps = max(1, r.get("prompt_tokens", 0) + r.get("completion_tokens", 0))
            r["bytes_moved_per_token"] = r.get("bytes_moved", 0) / steps
            rows.append(r)
            print(f"  {policy:9s} {budget:4.0%}: decode {r.get('decode_tps', 0):6.2f} tok/s, "
                  f"hit rate {r.get('hit_rate', 0):.2f}, {r['bytes_moved_per_token'] / 2**20:.1f} "
                  f"MiB moved/token", file=sys.stderr, flush=True)  # fmt: skip
    return rows


# ---- main ---------------------------------------------------------------------------------


def _runs(files, t: int, n: int, g: int, skip_transformers: bool) -> dict:
    """name -> (a function running one measurement in a fresh process, active bytes/token)."""
    me = ["-m", "tests.benchmarks.bench_engines", "--threads", str(t), "--prompt-tokens", str(n),
          "--gen-tokens", str(g), "--child"]  # fmt: skip

    def torch_run(name, *extra, env=None):
        return lambda: itamae_bench(files[name], "torch", t, n, g, *extra, env=env)

    no_step = {"ITAMAE_COMPILE_STEP": "0"}  # the expert kernel alone, decode op by op
    int8, int4, int4_int8_head = (torch_format_active_bytes(files[f]) for f in
                                  ("torch-int8", "torch-int4", "torch-int4-int8-head"))  # fmt: skip
    runs = {
        "torch int8": (torch_run("torch-int8"), int8),  # auto: the compiled step
        "torch int8 experts only": (torch_run("torch-int8", env=no_step), int8),
        "torch int8 plain": (torch_run("torch-int8", "--compile", "off"), int8),
        "torch int4": (torch_run("torch-int4"), int4),
        "torch int4 no step": (torch_run("torch-int4", env=no_step), int4),
        # torch's _weight_int4pack_mm_for_cpu instead of int4_kernel.py's VNNI kernel
        "torch int4 int4pack": (torch_run("torch-int4", env={"ITAMAE_INT4_KERNEL": "0"}), int4),
        "torch int4 int8 head": (torch_run("torch-int4-int8-head"), int4_int8_head),
        "itamae llamacpp Q8_0": (lambda: itamae_bench(files["Q8_0"], "llamacpp", t, n, g), gguf_active_bytes(files["Q8_0"])),
        "itamae llamacpp Q4_0": (lambda: itamae_bench(files["Q4_0"], "llamacpp", t, n, g), gguf_active_bytes(files["Q4_0"])),
        "raw llama.cpp Q8_0": (lambda: child([*me, "raw", str(files["Q8_0"])]), gguf_active_bytes(files["Q8_0"])),
        "raw llama.cpp Q4_0": (lambda: child([*me, "raw", str(files["Q4_0"])]), gguf_active_bytes(files["Q4_0"])),
    }  # fmt: skip
    if not skip_transformers:
        runs["transformers eager bf16"] = (
            lambda: child([*me, "transformers", str(files["hf"])]),
            hf_active_bytes(files["hf"]),
        )
    return runs


def _median_run(results: list[dict]) -> dict:
    """The round with the median decode speed, with the medians of every speed figure."""
    ok = [r for r in results if "decode_tps" in r]
    if not ok:
        return results[-1]
    mid = dict(sorted(ok, key=lambda r: r["decode_tps"])[len(ok) // 2])
    for key in ("prefill_tps", "decode_tps", "ttft_s"):
        values = sorted(r[key] for r in ok)
        mid[key] = values[len(values) // 2]
    mid["rounds"] = [{k: r.get(k) for k in ("prefill_tps", "decode_tps")} for r in ok]
    return mid


def engine_table(files, t: int, n: int, g: int, bandwidth: float, skip_transformers: bool,
                 rounds: int, only: list[str] | None = None) -> dict:  # fmt: skip
    runs = _runs(files, t, n, g, skip_transformers)
    if only:
        runs = {name: run for name, run in runs.items() if name in only}
    names = list(runs)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):  # rotating order: no engine always runs first or last
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(runs[name][0]())
            print(f"  round {r + 1}: {name}: {results[name][-1].get('decode_tps', 'failed')}",
                  file=sys.stderr, flush=True)  # fmt: skip
    table = {}
    for name in names:
        active = runs[name][1]
        r = dict(_median_run(results[name]), active_bytes_per_token=active)
        if "decode_tps" in r:
            r["roofline"] = active * r["decode_tps"] / bandwidth
        r.pop("expert_counts", None)
        table[name] = r
        print(f"{name:26s} " + (f"prefill {r['prefill_tps']:7.1f} tok/s  decode {r['decode_tps']:6.2f} tok/s  "
              f"TTFT {r['ttft_s']:5.2f}s  RSS {r['peak_rss_bytes'] / 2**30:4.1f} GiB  "
              f"{active / 2**20:5.0f} MiB/token  roofline {r['roofline']:.0%}"
              if "decode_tps" in r else f"failed: {r.get('error', '')[-300:]}"), file=sys.stderr)  # fmt: skip
    ratios = {}
    base = table.get("transformers eager bf16", {}).get("decode_tps")
    pairs = (("torch int8", "raw llama.cpp Q8_0"), ("torch int8 plain", "raw llama.cpp Q8_0"),
             ("torch int4", "raw llama.cpp Q4_0"), ("torch int8", "torch int8 plain"),
             ("torch int8", "torch int8 experts only"),
             ("torch int8 experts only", "raw llama.cpp Q8_0"),
             ("torch int4", "torch int4 no step"),
             ("torch int4", "torch int4 int4pack"), ("torch int4", "torch int4 int8 head"),
             ("torch int4 int8 head", "raw llama.cpp Q4_0"),
             ("torch int4 int4pack", "raw llama.cpp Q4_0"),
             ("itamae llamacpp Q8_0", "raw llama.cpp Q8_0"),
             ("itamae llamacpp Q4_0", "raw llama.cpp Q4_0"))  # fmt: skip
    for name, other in pairs:
        for key in ("decode_tps", "prefill_tps"):
            if name not in table or other not in table:
                continue
            mine, theirs = table[name].get(key), table[other].get(key)
            if mine and theirs:
                ratios[f"{name} / {other} ({key})"] = mine / theirs
        if name.startswith("torch") and base and table.get(name, {}).get("decode_tps"):
            ratios[f"{name} / transformers (decode_tps)"] = table[name]["decode_tps"] / base
    print(json.dumps(ratios, indent=1), file=sys.stderr)
    return {"engines": table, "ratios": ratios}


def startup_times(files, t: int, workdir: Path) -> dict:
    """Load time of the compiled torch engine with an empty Inductor cache, then with the
    cache the first start left (a second start of the app)."""
    cache = workdir / "inductor-cache-startup"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # inherited by the two children
    try:
        starts = [itamae_bench(files["torch-int8"], "torch", t, 16, 4) for _ in range(2)]
    finally:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    out = {}
    for label, r in zip(("first start", "second start"), starts, strict=True):
        out[label] = {k: r.get(k) for k in ("load_s", "compile_s", "compiled_experts", "error")}
        print(f"{label}: load {r.get('load_s', 0):.1f} s, of which compiling "
              f"{r.get('compile_s', 0):.1f} s", file=sys.stderr)  # fmt: skip
    return out


def expert_cache_tables(files, t: int, workdir: Path) -> dict:
    tables = {}
    for label, routing in (("uniform", ("--uniform-routing-seed", "0")), ("own router", ())):
        print(f"expert cache, synthetic model, {label} routing:", file=sys.stderr)
        tables[f"synthetic, {label} routing"] = cache_table(
            files["torch-int8"], t, 32, 32, workdir, *routing
        )
    demo = REPO / "assets" / "demo" / "hf"
    if (demo / "config.json").is_file():
        from converters.formats.torch_writer import convert_to_torch

        demo_torch = workdir / "demo-torch-int8"
        if not demo_torch.is_dir():
            convert_to_torch(demo, demo_torch, "int8")
        print("expert cache, demo model (its own, recorded routing):", file=sys.stderr)
        tables["demo"] = cache_table(demo_torch, t, 32, 32, workdir)
    else:
        tables["demo"] = "assets/demo/hf is not there yet"
    return tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=CACHE / "bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every engine, rotated")
    p.add_argument("--skip-cache-table", action="store_true")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--only", help="comma-separated runner names (e.g. 'torch int8,raw "
                   "llama.cpp Q8_0'), in the table's order")  # fmt: skip
    p.add_argument("--only-cache-table", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--shape",
        choices=sorted(LAYER_SHAPES),
        help="a published model's layer shape instead of the bench model's",
    )
    p.add_argument("--layers", type=int, default=2, help="decoder layers with --shape")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"],
                   help=f"instead of a spin of GOMP_SPINCOUNT={GOMP_SPINCOUNT} rounds")  # fmt: skip
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    t, n, g = args.threads, args.prompt_tokens, args.gen_tokens
    if args.omp_wait_policy:  # inherited by every child
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    else:
        os.environ.pop("OMP_WAIT_POLICY", None)
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    if args.child:  # one measurement, in this (fresh) process
        kind, path = args.child
        fn = raw_llama_cpp if kind == "raw" else transformers_eager
        print(json.dumps(fn(path, t, n, g)))
        return 0
    workdir = args.workdir
    if args.shape:  # in place: the checkpoint builder and the roofline read this dict
        SHAPES.update(LAYER_SHAPES[args.shape], num_hidden_layers=args.layers)
        workdir = workdir / f"{args.shape}-{args.layers}-layers"
    workdir.mkdir(parents=True, exist_ok=True)
    files = prepare(workdir)
    bandwidth = read_bandwidth(t)
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s", file=sys.stderr)
    report = {"shape": args.shape or "bench model", "layers": SHAPES["num_hidden_layers"],
              "threads": t, "prompt_tokens": n, "gen_tokens": g, "read_bandwidth_bytes_per_s": bandwidth,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "omp_wait_policy": args.omp_wait_policy,
              "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}  # fmt: skip
    if not args.only_cache_table:
        if not args.skip_startup:
            report["startup"] = startup_times(files, t, workdir)
        only = [name.strip() for name in args.only.split(",")] if args.only else None
        report.update(engine_table(files, t, n, g, bandwidth, args.skip_transformers, args.rounds,
                                   only))  # fmt: skip
        report["load_average_after"] = os.getloadavg()
    if not args.skip_cache_table:
        report["expert_cache"] = expert_cache_tables(files, t, workdir)
    print(json.dumps(report, indent=1) if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
