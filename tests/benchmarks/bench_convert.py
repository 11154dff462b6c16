"""Conversion speed and memory: Itamae against llama.cpp's own convert_hf_to_gguf.py.

Not a test (it reports figures); run it by hand:

    python -m tests.benchmarks.bench_convert [--quant q8_0] [--workdir DIR] [--json]
    python -m tests.benchmarks.bench_convert --model gpt-oss [--layers 2] [--rounds 3]
        [--compare-tree DIR]

Builds (once, cached in --workdir) a synthetic Qwen3-MoE checkpoint with realistic shapes:
hidden 1024, 12 layers, 32 experts with top-4, expert FFN 768, Qwen2's real 151,936-token
vocabulary (from the llama-cpp-python sdist's models/ggml-vocab-qwen2.gguf, so llama.cpp's
converter accepts it), bf16 weights in ~1 GB shards with an index, as published models are.
That is about 1.3B parameters. Then converts it to Q8_0 with each converter in its own
process, in the same run, and reports wall time and peak RSS (VmHWM of that process
alone, see tests/benchmarks/peak_rss.py) of each, the ratios, and how many tensors of the
two files are byte-identical. With --rounds N the converters run N times in rotating order
(on a shared, noisy machine compare the ratios within a round, not times across runs), and
--compare-tree runs a second Itamae checkout (e.g. main, to measure a change) in the same
rounds and checks that both Itamae files are the same bytes.

`--model gpt-oss` converts a gpt-oss-20b-shaped checkpoint with MXFP4 experts instead
(tests/benchmarks/gpt_oss_checkpoint.py; a few layers, so it fits a small shared machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.benchmarks.gpt_oss_checkpoint import build_gpt_oss_checkpoint
from tests.fixtures.llamacpp_reference import CACHE, llama_cpp_source, vocabulary_tokenizer

SHAPES = dict(
    hidden_size=1024,
    num_hidden_layers=12,
    num_experts=32,
    num_experts_per_tok=4,
    moe_intermediate_size=768,
    intermediate_size=3072,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=64,
)
SHARD_BYTES = 1 << 30


def checkpoint_config(vocab_size: int) -> dict:
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        **SHAPES,
        "vocab_size": vocab_size,
        "max_position_embeddings": 32768,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-6,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": None,
        "eos_token_id": 151643,
    }


def layer_shapes(bid: int) -> dict[str, tuple[int, ...]]:
    h, e, f = SHAPES["hidden_size"], SHAPES["num_experts"], SHAPES["moe_intermediate_size"]
    q = SHAPES["num_attention_heads"] * SHAPES["head_dim"]
    kv = SHAPES["num_key_value_heads"] * SHAPES["head_dim"]
    p = f"model.layers.{bid}."
    shapes = {
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (q, h),
        p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.v_proj.weight": (kv, h),
        p + "self_attn.o_proj.weight": (h, q),
        p + "self_attn.q_norm.weight": (SHAPES["head_dim"],),
        p + "self_attn.k_norm.weight": (SHAPES["head_dim"],),
        p + "mlp.gate.weight": (e, h),
    }
    for x in range(e):
        shapes[p + f"mlp.experts.{x}.gate_proj.weight"] = (f, h)
        shapes[p + f"mlp.experts.{x}.up_proj.weight"] = (f, h)
        shapes[p + f"mlp.experts.{x}.down_proj.weight"] = (h, f)
    return shapes


def build_checkpoint(dest: Path) -> Path:
    """The synthetic Qwen3-MoE checkpoint (memory while writing: one shard)."""
    if (dest / "model.safetensors.index.json").is_file():
        return dest
    tokenizer = vocabulary_tokenizer("qwen2")
    vocab = len(json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    h = SHAPES["hidden_size"]
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for bid in range(SHAPES["num_hidden_layers"]):
        shapes.update(layer_shapes(bid))
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (vocab, h)})
    return write_checkpoint(dest, checkpoint_config(vocab), shapes, tokenizer)


def write_checkpoint(
    dest: Path, config: dict, shapes: dict[str, tuple[int, ...]], tokenizer: Path
) -> Path:
    """A hub-layout folder at `dest`: `tokenizer`'s files, config.json, and seeded bf16
    tensors of `shapes` (norm weights ones) in ~1 GB shards with an index, written shard by
    shard (memory: one shard)."""
    from safetensors.torch import save_file

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in tokenizer.iterdir():
        shutil.copy(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))

    gen = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    files: list[tuple[str, list[str]]] = []

    def flush() -> None:
        name = f"shard-{len(files):05d}.safetensors"
        save_file(shard, tmp / name, metadata={"format": "pt"})
        files.append((name, list(shard)))
        shard.clear()

    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            shard[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            shard[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if sum(t.numel() * 2 for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    weight_map = {}
    for i, (name, tensors) in enumerate(files):
        final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"  # the hub's shard names
        (tmp / name).rename(tmp / final)
        weight_map.update(dict.fromkeys(tensors, final))
    total = sum(torch.Size(s).numel() for s in shapes.values())
    index = {"metadata": {"total_size": total * 2}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tmp.rename(dest)
    return dest


def measure(args: list[str], workdir: Path, tree: Path | None = None) -> dict:
    """Wall time and peak RSS of one conversion in its own process (tests.benchmarks.peak_rss:
    VmHWM of that process alone). `args`: ["-m", module, ...] or [script, ...]; `tree`: run
    the modules of that Itamae checkout instead of this one."""
    report = workdir / "peak_rss.json"
    cmd = [sys.executable, "-m", "tests.benchmarks.peak_rss", str(report), *args]
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(  # (`-m` puts the working folder first on the path)
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tree
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),  # user + system, all threads: the work, less load-dependent
        "peak_rss_bytes": json.loads(report.read_text())["peak_rss_bytes"],
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def identical_tensors(a: Path, b: Path) -> str:
    """How many tensors of the two files hold the same type and bytes ("n/total")."""
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    same = sum(
        1
        for name, t in ta.items()
        if name in tb
        and t.tensor_type == tb[name].tensor_type
        and bytes(t.data.data) == bytes(tb[name].data.data)
    )
    return f"{same}/{len(set(ta) | set(tb))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="q8_0", help="q8_0 (both converters), f16, bf16")
    parser.add_argument("--workdir", type=Path, default=CACHE / "bench")
    parser.add_argument("--keep", action="store_true", help="keep the converted files")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", choices=("qwen3-moe", "gpt-oss"), default="qwen3-moe")
    parser.add_argument("--layers", type=int, default=2, help="gpt-oss: decoder layers")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, in rotating order")
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also convert with the Itamae checkout in this folder (e.g. `git worktree add` "
        "of main) in the same rounds; reports whether both wrote the same bytes",
    )
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()  # the converters may run in another folder

    if args.model == "gpt-oss":
        src = build_gpt_oss_checkpoint(
            args.workdir / f"synthetic-gpt-oss-{args.layers}l", args.layers
        )
        from converters.facts.inspection import inspect

        params = inspect(src).total_params
    else:
        src = build_checkpoint(args.workdir / "synthetic-qwen3-moe-1b")
        params = sum(
            torch.Size(s).numel()
            for bid in range(SHAPES["num_hidden_layers"])
            for s in layer_shapes(bid).values()
        )
        vocab = json.loads((src / "config.json").read_text())["vocab_size"]
        params += 2 * vocab * SHAPES["hidden_size"] + SHAPES["hidden_size"]
    script = llama_cpp_source() / "convert_hf_to_gguf.py"
    quant = args.quant.upper()

    def itamae(out: Path) -> list[str]:
        return ["-m", "app.cli", "convert", str(src), "-o", str(out), "--quant", quant]

    runners = {
        "itamae": (itamae, None),
        "llama.cpp": (lambda out: [str(script), str(src), "--outfile", str(out),
                                   "--outtype", args.quant.lower()], None),
    }  # fmt: skip
    if args.compare_tree is not None:
        runners["itamae@" + args.compare_tree.name] = (itamae, args.compare_tree.resolve())
    outputs = {who: args.workdir / f"{who.replace('@', '-')}.gguf" for who in runners}
    rounds = []
    for r in range(args.rounds):
        names = list(runners)
        order = names[r % len(names) :] + names[: r % len(names)]  # rotating, so neither
        one = {"order": order, "load_before": load_average()}  # always runs first
        for who in order:
            outputs[who].unlink(missing_ok=True)
            make_args, tree = runners[who]
            one[who] = measure(make_args(outputs[who]), args.workdir, tree)
        one["load_after"] = load_average()
        one["speedup"] = round(one["llama.cpp"]["wall_s"] / one["itamae"]["wall_s"], 2)
        one["rss_ratio"] = round(
            one["itamae"]["peak_rss_bytes"] / one["llama.cpp"]["peak_rss_bytes"], 2
        )
        rounds.append(one)
        if not args.json:
            print(f"round {r + 1} (order {', '.join(order)}; load {one['load_before']} -> "
                  f"{one['load_after']}):", flush=True)  # fmt: skip
            for who in runners:
                print(f"  {who:18s} {quant}: {one[who]['wall_s']:7.1f} s   CPU "
                      f"{one[who]['cpu_s']:6.1f} s   peak RSS "
                      f"{one[who]['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
            print(f"  Itamae is {one['speedup']}x faster at {one['rss_ratio']}x the peak memory",
                  flush=True)  # fmt: skip
    ours, theirs = outputs["itamae"], outputs["llama.cpp"]
    report = {
        "checkpoint": {
            "params": params,
            "bytes": sum(f.stat().st_size for f in src.glob("*.safetensors")),
        },
        "quant": args.quant,
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "speedup_median": statistics.median(r["speedup"] for r in rounds),
        "rss_ratio_max": max(r["rss_ratio"] for r in rounds),
        "output_bytes": {"itamae": ours.stat().st_size, "llama.cpp": theirs.stat().st_size},
    }
    report["identical_tensors"] = identical_tensors(ours, theirs)
    if args.compare_tree is not None:
        same = [sha256(outputs[who]) for who in runners if who.startswith("itamae")]
        report["itamae_outputs_identical"] = len(set(same)) == 1
    if not args.keep:
        for f in outputs.values():
            f.unlink(missing_ok=True)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"checkpoint ({args.model}): {params / 1e9:.2f}B parameters, "
            f"{report['checkpoint']['bytes'] / 2**30:.2f} GiB on disk; {args.rounds} rounds"
        )
        print(f"Itamae's speed-up, median of the rounds: {report['speedup_median']}x; "
              f"peak memory ratio at most {report['rss_ratio_max']}x")  # fmt: skip
        print(f"tensors identical in both files (type and bytes): {report['identical_tensors']}")
        if "itamae_outputs_identical" in report:
            print(f"both Itamae trees wrote the same file: {report['itamae_outputs_identical']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
