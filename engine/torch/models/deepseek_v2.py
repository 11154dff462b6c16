"""DeepSeek-V2 (and V2-Lite): multi-head latent attention with YaRN RoPE on interleaved
pairs, softmax routing (greedy or group-limited greedy), routed scaling, shared experts,
and `first_k_dense_replace` dense layers first.
References: DeepSeek-V2 paper (arXiv 2405.04434); deepseek-ai's modeling_deepseek.py;
transformers' modeling_deepseek_v2.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import MLAttention
from ..config import BaseArgs
from ..moe import Router
from ..rope import Rotary, yarn_get_mscale
from ..transformer import DecoderModel


@dataclass
class ModelArgs(BaseArgs):
    n_routed_experts: int = 64
    num_experts_per_tok: int = 6
    n_shared_experts: int = 2
    moe_intermediate_size: int = 1407
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    routed_scaling_factor: float = 1.0
    topk_method: str = "greedy"
    scoring_func: str = "softmax"
    n_group: int | None = None
    topk_group: int | None = None
    norm_topk_prob: bool = False
    kv_lora_rank: int = 512
    q_lora_rank: int | None = 1536
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128

    def is_moe_layer(self, layer: int) -> bool:
        return (
            self.n_routed_experts > 0
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )

    @property
    def n_experts(self) -> int:
        return self.n_routed_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok


class Model(DecoderModel):
    Args = ModelArgs

    def make_rotary(self) -> Rotary:
        a = self.args
        return Rotary(a.rope, a.qk_rope_head_dim, a.max_position_embeddings, interleaved=True)

    def softmax_scale(self) -> float:
        a = self.args
        scale = (a.qk_nope_head_dim + a.qk_rope_head_dim) ** -0.5
        if a.rope.rope_type == "yarn" and a.rope.mscale_all_dim:
            mscale = yarn_get_mscale(a.rope.factor, a.rope.mscale_all_dim)
            scale *= mscale * mscale
        return scale

    def build_attention(self, i: int) -> MLAttention:
        a, w, p = self.args, self.w, f"model.layers.{i}.self_attn"
        q_parts = (
            dict(q=w.linear(f"{p}.q_proj"))
            if a.q_lora_rank is None
            else dict(q_a=w.linear(f"{p}.q_a_proj"), q_a_norm=w.get(f"{p}.q_a_layernorm.weight"),
                      q_b=w.linear(f"{p}.q_b_proj"))
        )  # fmt: skip
        return MLAttention(
            kv_a=w.linear(f"{p}.kv_a_proj_with_mqa"), kv_a_norm=w.get(f"{p}.kv_a_layernorm.weight"),
            kv_b=w.get(f"{p}.kv_b_proj.weight"), o=w.linear(f"{p}.o_proj"),
            n_heads=a.num_attention_heads, nope_dim=a.qk_nope_head_dim,
            rope_dim=a.qk_rope_head_dim, v_dim=a.v_head_dim, rotary=self.rotary, layer=i,
            scale=self.softmax_scale(), eps=a.rms_norm_eps, **q_parts,
        )  # fmt: skip

    def build_router(self, i: int) -> Router:
        a = self.args
        grouped = a.topk_method == "group_limited_greedy"
        return Router(
            self.w.get(f"model.layers.{i}.mlp.gate.weight", torch.float32), a.num_experts_per_tok,
            scoring=a.scoring_func, norm_topk_prob=a.norm_topk_prob,
            routed_scaling_factor=a.routed_scaling_factor, n_group=a.n_group or 1,
            topk_group=a.topk_group or 1, group_score="max" if grouped else None,
            deepseek_v2_norm=True,
        )  # fmt: skip

    def build_shared(self, i: int):
        if not self.args.n_shared_experts:
            return None, None
        return self.mlp(f"model.layers.{i}.mlp.shared_experts"), None
