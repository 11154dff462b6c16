"""A synthetic gpt-oss-20b-shaped checkpoint for the conversion benchmark (bench_convert.py
--model gpt-oss): the published 20b's shapes (hidden 2880, 64 query / 8 KV heads of 64,
32 experts with top-4 and FFN 2880, sliding window 128, YaRN) but only a few layers, the
experts as MXFP4 `_blocks`/`_scales` with bf16 biases and everything else bf16, as OpenAI
publishes them. The vocabulary is Qwen2's (151,936 tokens) from the llama-cpp-python
sdist, which llama.cpp's converter recognises (gpt-oss's own o200k vocabulary has no
ggml-vocab file there); random values, seeded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tests.fixtures.gpt_oss import PUBLISHED
from tests.fixtures.llamacpp_reference import vocabulary_tokenizer

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, FFN = 2880, 64, 8, 64, 32, 2880


def config(vocab_size: int, layers: int) -> dict:
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": HIDDEN, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "num_local_experts": EXPERTS,
        "num_experts_per_tok": 4, "intermediate_size": FFN, "sliding_window": 128,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "attention_bias": True,
        "tie_word_embeddings": False, "vocab_size": vocab_size, "eos_token_id": 151643,
        **PUBLISHED,
    }  # fmt: skip


def layer_tensors(bid: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p, q, kv = f"model.layers.{bid}.", HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM

    def bf16(*shape):
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    def mxfp4(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (EXPERTS, rows, cols // 32, 16), generator=gen)
        scales = torch.randint(118, 124, (EXPERTS, rows, cols // 32), generator=gen)
        return blocks.to(torch.uint8), scales.to(torch.uint8)

    out = {
        p + "input_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
        p + "post_attention_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
        p + "self_attn.sinks": bf16(HEADS),
        p + "mlp.router.weight": bf16(EXPERTS, HIDDEN),
        p + "mlp.router.bias": bf16(EXPERTS),
        p + "mlp.experts.gate_up_proj_bias": bf16(EXPERTS, 2 * FFN),
        p + "mlp.experts.down_proj_bias": bf16(EXPERTS, HIDDEN),
    }
    for name, rows, cols in (
        ("q", q, HIDDEN),
        ("k", kv, HIDDEN),
        ("v", kv, HIDDEN),
        ("o", HIDDEN, q),
    ):
        out[p + f"self_attn.{name}_proj.weight"] = bf16(rows, cols)
        out[p + f"self_attn.{name}_proj.bias"] = bf16(rows)
    for proj, rows, cols in (("gate_up_proj", 2 * FFN, HIDDEN), ("down_proj", HIDDEN, FFN)):
        blocks, scales = mxfp4(rows, cols)
        out[p + f"mlp.experts.{proj}_blocks"], out[p + f"mlp.experts.{proj}_scales"] = (
            blocks,
            scales,
        )
    return out


def build_gpt_oss_checkpoint(dest: Path, layers: int) -> Path:
    """One shard per layer (plus embeddings and head), with an index, as the hub has them."""
    if (dest / "model.safetensors.index.json").is_file():
        return dest
    from safetensors.torch import save_file

    tokenizer = vocabulary_tokenizer("qwen2")
    vocab = len(json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in tokenizer.iterdir():
        shutil.copy(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps(config(vocab, layers), indent=2))
    gen = torch.Generator().manual_seed(0)
    shards = [
        {
            "model.embed_tokens.weight": (
                torch.randn(vocab, HIDDEN, generator=gen) * 0.02
            ).bfloat16()
        },
        *(layer_tensors(bid, gen) for bid in range(layers)),
        {
            "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
            "lm_head.weight": (torch.randn(vocab, HIDDEN, generator=gen) * 0.02).bfloat16(),
        },
    ]
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, tmp / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * t.element_size() for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tmp.rename(dest)
    return dest
