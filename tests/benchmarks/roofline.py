"""Roofline figures for tests/benchmarks/bench_engines.py: the bytes one decode step must
read (active experts, every other matrix, one embedding row) for each engine's files, and
this machine's read bandwidth, measured."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from tests.benchmarks.bench_convert import SHAPES


def read_bandwidth(threads: int, gib: float = 1.0) -> float:
    """Bytes/s a reduction over a large float32 tensor reads (best of 5)."""
    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - started)
    return x.numel() * 4 / best


def torch_format_active_bytes(folder: Path) -> int:
    from converters.formats.torch_format import MANIFEST

    m = json.loads((folder / MANIFEST).read_text())
    total = 0
    for name, t in m["tensors"].items():
        rows, cols = (t["shape"] + [1])[:2]
        if "embed_tokens" in name:
            total += cols * 2  # one bf16 row looked up
        elif t["scheme"] == "int8_row":
            total += rows * cols + rows * 4
        elif t["scheme"] == "int4_group":  # nibbles, float16 scale and zero per 64
            total += rows * cols // 2 + rows * (cols // 64) * 4
        else:
            total += rows * cols * (4 if ".mlp.gate." in name else 2)
    top_k = SHAPES["num_experts_per_tok"]
    total += sum(e["bytes_per_expert"] * top_k for e in m["expert_layers"].values())
    return total


def gguf_active_bytes(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    share = SHAPES["num_experts_per_tok"] / SHAPES["num_experts"]
    total = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            total += int(t.n_bytes) // int(t.shape[-1])  # one row
        elif "_exps" in t.name:
            total += int(int(t.n_bytes) * share)
        else:
            total += int(t.n_bytes)
    return total


def hf_active_bytes(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    h, v, f = config["hidden_size"], config["vocab_size"], SHAPES["moe_intermediate_size"]
    q = SHAPES["num_attention_heads"] * SHAPES["head_dim"]
    kv = SHAPES["num_key_value_heads"] * SHAPES["head_dim"]
    per_layer = (
        2 * h * q
        + 2 * h * kv
        + SHAPES["num_experts"] * h
        + 3 * h * f * SHAPES["num_experts_per_tok"]
    )
    return 2 * (per_layer * SHAPES["num_hidden_layers"] + v * h + h)
