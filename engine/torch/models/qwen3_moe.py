"""Qwen3-MoE: Qwen2-MoE without shared experts or qkv bias, with per-head RMSNorm on q and
k before RoPE and an explicit head_dim. Reference: transformers' modeling_qwen3_moe.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import qwen2_moe


@dataclass
class ModelArgs(qwen2_moe.ModelArgs):
    num_experts: int = 128
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768


class Model(qwen2_moe.Model):
    Args = ModelArgs

    def build_attention(self, i: int):
        p = f"model.layers.{i}.self_attn"
        return self.gqa(i, q_norm=self.w.get(f"{p}.q_norm.weight"),
                        k_norm=self.w.get(f"{p}.k_norm.weight"), qk_norm_per_head=True)  # fmt: skip

    def build_shared(self, i: int):
        return None, None
