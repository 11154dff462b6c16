"""GLM-4.5 / 4.6 / 4.7 and GLM-4.5-Air: GQA with qkv bias, optional per-head q/k RMSNorm,
RoPE on the first `partial_rotary_factor` of each head (rotate-half pairs); DeepSeek-V3's
sigmoid router (correction bias for the choice, groups by their two best, renormalised,
times routed_scaling_factor) plus `n_shared_experts` shared experts as one MLP, after
`first_k_dense_replace` dense layers. The NextN/MTP layer is not used.
Reference: transformers' modeling_glm4_moe.py (Glm4MoeTopkRouter, Glm4MoeMoE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import BaseArgs
from ..moe import Router
from ..transformer import DecoderModel


@dataclass
class ModelArgs(BaseArgs):
    n_routed_experts: int = 128
    num_experts_per_tok: int = 8
    n_shared_experts: int = 1
    moe_intermediate_size: int = 1408
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    use_qk_norm: bool = False
    rms_norm_eps: float = 1e-5

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_routed_experts > 0 and layer >= self.first_k_dense_replace

    @property
    def n_experts(self) -> int:
        return self.n_routed_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok


class Model(DecoderModel):
    Args = ModelArgs

    def build_attention(self, i: int):
        if not self.args.use_qk_norm:
            return self.gqa(i)
        p = f"model.layers.{i}.self_attn"
        return self.gqa(i, q_norm=self.w.get(f"{p}.q_norm.weight"),
                        k_norm=self.w.get(f"{p}.k_norm.weight"), qk_norm_per_head=True)  # fmt: skip

    def build_router(self, i: int) -> Router:
        a, p = self.args, f"model.layers.{i}.mlp.gate"
        return Router(
            self.w.get(f"{p}.weight", torch.float32), a.num_experts_per_tok, scoring="sigmoid",
            norm_topk_prob=a.norm_topk_prob, routed_scaling_factor=a.routed_scaling_factor,
            n_group=a.n_group or 1, topk_group=a.topk_group or 1, group_score="top2_sum",
            correction_bias=self.w.get(f"{p}.e_score_correction_bias", torch.float32),
        )  # fmt: skip

    def build_shared(self, i: int):
        if not self.args.n_shared_experts:
            return None, None
        return self.mlp(f"model.layers.{i}.mlp.shared_experts"), None
