"""MiniMax-M2: Mixtral's layout with a sigmoid router whose correction bias (beside the
experts, `block_sparse_moe.e_score_correction_bias`) steers the choice but not the weights,
top-k always renormalised; q/k RMSNorm over the whole projection; RoPE on the first
`rotary_dim` of each head (the published legacy field for partial_rotary_factor).
Reference: transformers' modeling_minimax_m2.py (MiniMaxM2TopKRouter, MiniMaxM2Attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..moe import Router
from . import mixtral


@dataclass
class ModelArgs(mixtral.ModelArgs):
    num_local_experts: int = 256
    num_experts_per_tok: int = 8
    rms_norm_eps: float = 1e-6
    rotary_dim: int | None = None
    default_theta = 5e6

    def __post_init_args__(self, config: dict) -> None:
        if self.rotary_dim:
            self.rope.partial_rotary_factor = self.rotary_dim / self.head_dim


class Model(mixtral.Model):
    Args = ModelArgs

    def build_attention(self, i: int):
        p = f"model.layers.{i}.self_attn"
        return self.gqa(i, q_norm=self.w.get(f"{p}.q_norm.weight"),
                        k_norm=self.w.get(f"{p}.k_norm.weight"), qk_norm_per_head=False)  # fmt: skip

    def build_router(self, i: int) -> Router:
        p = f"model.layers.{i}.block_sparse_moe"
        return Router(
            self.w.get(f"{p}.gate.weight", torch.float32), self.args.num_experts_per_tok,
            scoring="sigmoid", norm_topk_prob=True,
            correction_bias=self.w.get(f"{p}.e_score_correction_bias", torch.float32),
        )  # fmt: skip
