"""A synthetic DeepSeek-V3.2-shaped checkpoint for the sparse-attention benchmark
(bench_sparse_attention.py): the published model's attention as it is (128 MLA heads, q LoRA
1536, KV latent 512 + rope 64, nope/value heads of 128, a lightning indexer of 64 heads of
128 choosing the top 2,048 positions, YaRN) and its router (sigmoid scores, noaux_tc, groups,
one shared expert), with a narrower trunk (hidden 1024), 6 layers and 64 small experts, so
that the whole is about 1.1B parameters. Attention is what the benchmark measures, so it
keeps the published widths: a decode step's attention reads H x (L + R) per cached position
for the scores and H x L for the values, the indexer D x H_i per position.

The vocabulary is Qwen2's real 151,936 tokens (tests/benchmarks/bench_convert.py; DeepSeek's
own 129,280-token vocabulary is not in the llama-cpp-python sdist), bf16 weights in ~1 GB
shards as published; random values, seeded. No MTP layer (Itamae leaves it out of both
formats).

`filler_config` gives a cheap model with the same cache shapes per position (latent, rope
key and indexer key widths, layer count): llama.cpp prefills the context with it, and its
cache is loaded into the benchmarked model (llama.cpp's sequence state carries only cache
rows, so the widths are all that must agree).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks.bench_convert import write_checkpoint
from tests.fixtures.llamacpp_reference import vocabulary_tokenizer

# deepseek-ai/DeepSeek-V3.2's config.json, the dimensions the benchmark keeps
PUBLISHED_ATTENTION = dict(
    num_attention_heads=128,
    num_key_value_heads=128,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    index_n_heads=64,
    index_head_dim=128,
    index_topk=2048,
)
TRUNK = dict(
    hidden_size=1024,
    num_hidden_layers=6,
    intermediate_size=3072,
    moe_intermediate_size=256,
    n_routed_experts=64,
    num_experts_per_tok=8,
    n_group=8,
    topk_group=4,
    n_shared_experts=1,
    first_k_dense_replace=1,
)
# A filler with the same per-position cache widths and layer count, and little else
FILLER = dict(
    PUBLISHED_ATTENTION,
    **TRUNK,
    num_attention_heads=2,
    num_key_value_heads=2,
    q_lora_rank=64,
    index_n_heads=1,
)
FILLER.update(hidden_size=256, intermediate_size=256, moe_intermediate_size=64)


def config(vocab_size: int, dims: dict) -> dict:
    return {
        "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32", **dims,
        "routed_scaling_factor": 2.5, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
        "norm_topk_prob": True, "moe_layer_freq": 1, "ep_size": 1, "hidden_act": "silu",
        "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "num_nextn_predict_layers": 0, "tie_word_embeddings": False, "vocab_size": vocab_size,
        "bos_token_id": None, "eos_token_id": 151643, "torch_dtype": "bfloat16",
    }  # fmt: skip


def layer_shapes(bid: int, d: dict) -> dict[str, tuple[int, ...]]:
    h, heads, p = d["hidden_size"], d["num_attention_heads"], f"model.layers.{bid}."
    qk = d["qk_nope_head_dim"] + d["qk_rope_head_dim"]
    shapes = {
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
        p + "self_attn.q_a_proj.weight": (d["q_lora_rank"], h),
        p + "self_attn.q_a_layernorm.weight": (d["q_lora_rank"],),
        p + "self_attn.q_b_proj.weight": (heads * qk, d["q_lora_rank"]),
        p + "self_attn.kv_a_proj_with_mqa.weight": (d["kv_lora_rank"] + d["qk_rope_head_dim"], h),
        p + "self_attn.kv_a_layernorm.weight": (d["kv_lora_rank"],),
        p + "self_attn.kv_b_proj.weight": (
            heads * (d["qk_nope_head_dim"] + d["v_head_dim"]),
            d["kv_lora_rank"],
        ),
        p + "self_attn.o_proj.weight": (h, heads * d["v_head_dim"]),
        p + "self_attn.indexer.wq_b.weight": (
            d["index_n_heads"] * d["index_head_dim"],
            d["q_lora_rank"],
        ),
        p + "self_attn.indexer.wk.weight": (d["index_head_dim"], h),
        p + "self_attn.indexer.k_norm.weight": (d["index_head_dim"],),
        p + "self_attn.indexer.k_norm.bias": (d["index_head_dim"],),
        p + "self_attn.indexer.weights_proj.weight": (d["index_n_heads"], h),
    }
    if bid < d["first_k_dense_replace"]:
        return shapes | _ffn(p + "mlp.", h, d["intermediate_size"])
    e, f = d["n_routed_experts"], d["moe_intermediate_size"]
    shapes[p + "mlp.gate.weight"] = (e, h)
    shapes[p + "mlp.gate.e_score_correction_bias"] = (e,)
    for x in range(e):
        shapes |= _ffn(p + f"mlp.experts.{x}.", h, f)
    return shapes | _ffn(p + "mlp.shared_experts.", h, f * d["n_shared_experts"])


def _ffn(p: str, hidden: int, inner: int) -> dict[str, tuple[int, int]]:
    return {
        p + "gate_proj.weight": (inner, hidden),
        p + "up_proj.weight": (inner, hidden),
        p + "down_proj.weight": (hidden, inner),
    }


def build_v32_checkpoint(dest: Path, dims: dict | None = None) -> Path:
    """Write the checkpoint (TRUNK and the published attention, or `dims`) once."""
    if (dest / "model.safetensors.index.json").is_file():
        return dest
    dims = dims or {**PUBLISHED_ATTENTION, **TRUNK}
    tokenizer = vocabulary_tokenizer("qwen2")
    vocab = len(json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    h = dims["hidden_size"]
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for bid in range(dims["num_hidden_layers"]):
        shapes |= layer_shapes(bid, dims)
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    return write_checkpoint(dest, config(vocab, dims), shapes, tokenizer)


def n_parameters(folder: Path) -> int:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return index["metadata"]["total_size"] // 2  # bf16
