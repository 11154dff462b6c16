"""Conversion memory does not grow with the model: the same layer shapes, four times the
layers (and the bytes), the same peak RSS within a margin far below the growth.

Each conversion (`itamae convert`) runs in its own process and reports its own VmHWM
(tests/benchmarks/peak_rss.py), so nothing the test process holds is counted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

HIDDEN, EXPERTS, EXPERT_FFN = 512, 32, 512  # 48 MiB of bf16 experts per layer


def build(src_fixture, dest, n_layers: int):
    """A Qwen3-MoE checkpoint with the fixture's tokenizer and `n_layers` wide MoE layers."""
    shutil.copytree(src_fixture, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((dest / "config.json").read_text())
    config.update(
        hidden_size=HIDDEN,
        num_hidden_layers=n_layers,
        num_local_experts=EXPERTS,
        moe_intermediate_size=EXPERT_FFN,
        head_dim=64,
        torch_dtype="bfloat16",
    )
    (dest / "config.json").write_text(json.dumps(config))
    heads, kv_heads, vocab = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["vocab_size"],
    )
    gen = torch.Generator().manual_seed(0)

    def weight(*shape):
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    tensors = {
        "model.embed_tokens.weight": weight(vocab, HIDDEN),
        "lm_head.weight": weight(vocab, HIDDEN),
    }
    tensors["model.norm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    for bid in range(n_layers):
        p = f"model.layers.{bid}."
        tensors.update(
            {
                p + "input_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
                p + "self_attn.q_proj.weight": weight(heads * 64, HIDDEN),
                p + "self_attn.k_proj.weight": weight(kv_heads * 64, HIDDEN),
                p + "self_attn.v_proj.weight": weight(kv_heads * 64, HIDDEN),
                p + "self_attn.o_proj.weight": weight(HIDDEN, heads * 64),
                p + "self_attn.q_norm.weight": torch.ones(64, dtype=torch.bfloat16),
                p + "self_attn.k_norm.weight": torch.ones(64, dtype=torch.bfloat16),
                p + "mlp.gate.weight": weight(EXPERTS, HIDDEN),
            }
        )
        for x in range(EXPERTS):
            tensors[p + f"mlp.experts.{x}.gate_proj.weight"] = weight(EXPERT_FFN, HIDDEN)
            tensors[p + f"mlp.experts.{x}.up_proj.weight"] = weight(EXPERT_FFN, HIDDEN)
            tensors[p + f"mlp.experts.{x}.down_proj.weight"] = weight(HIDDEN, EXPERT_FFN)
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def peak_rss_of_conversion(src, dest, workdir) -> int:
    report = workdir / f"{dest.stem}-rss.json"
    cmd = [sys.executable, "-m", "tests.benchmarks.peak_rss", str(report), "-m", "app.cli"]
    done = subprocess.run(
        [*cmd, "convert", str(src), "-o", str(dest), "--quant", "Q8_0"], capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(report.read_text())["peak_rss_bytes"]


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_layers(hf_checkpoint, tmp_path):
    small = build(hf_checkpoint("qwen3_moe"), tmp_path / "small", 2)
    large = build(hf_checkpoint("qwen3_moe"), tmp_path / "large", 8)
    growth = (large / "model.safetensors").stat().st_size - (
        small / "model.safetensors"
    ).stat().st_size
    assert growth > 250 * 2**20
    rss_small = peak_rss_of_conversion(small, tmp_path / "small.gguf", tmp_path)
    rss_large = peak_rss_of_conversion(large, tmp_path / "large.gguf", tmp_path)
    print(f"peak RSS: 2 layers {rss_small / 2**20:.0f} MiB, 8 layers {rss_large / 2**20:.0f} MiB")
    assert rss_large - rss_small < 0.1 * growth
