"""Qwen3.5-MoE: Qwen3-Next with separate linear-attention projections (q|k|v already in
the conv's channel order), every layer MoE with top-k renormalised. On text the interleaved
MRoPE of the release is plain RoPE (its three position streams are equal).
Reference: transformers' modeling_qwen3_5_moe.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..linear_attention import GatedDeltaNet
from . import qwen3_next


@dataclass
class ModelArgs(qwen3_next.ModelArgs):
    num_experts: int = 256
    num_experts_per_tok: int = 8
    norm_topk_prob: bool = True  # Qwen3.5's router always renormalises


class Model(qwen3_next.Model):
    Args = ModelArgs

    def linear_attention(self, i: int) -> GatedDeltaNet:
        w, p = self.w, f"model.layers.{i}.linear_attn"
        return GatedDeltaNet(
            in_qkvz=None,
            in_ba=None,
            in_qkv=w.linear(f"{p}.in_proj_qkv"),
            in_z=w.linear(f"{p}.in_proj_z"),
            in_b=w.linear(f"{p}.in_proj_b"),
            in_a=w.linear(f"{p}.in_proj_a"),
            **self.delta_net_parts(i),
        )
