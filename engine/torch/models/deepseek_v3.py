"""DeepSeek-V3 / R1 (and Kimi K2): DeepSeek-V2's MLA with sigmoid expert scores, an
`e_score_correction_bias` that steers the choice but not the weights, groups ranked by the
sum of their two best experts (`noaux_tc`), renormalisation and a routed scaling factor.
The multi-token-prediction layer (model.layers.{num_hidden_layers}) is not used.
References: DeepSeek-V3 technical report (arXiv 2412.19437, §2.1.2); deepseek-ai's
modeling_deepseek.py; transformers' modeling_deepseek_v3.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..moe import Router
from . import deepseek_v2


@dataclass
class ModelArgs(deepseek_v2.ModelArgs):
    n_routed_experts: int = 256
    num_experts_per_tok: int = 8
    n_shared_experts: int = 1
    moe_intermediate_size: int = 2048
    first_k_dense_replace: int = 3
    routed_scaling_factor: float = 2.5
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    n_group: int | None = 8
    topk_group: int | None = 4
    norm_topk_prob: bool = True


class Model(deepseek_v2.Model):
    Args = ModelArgs

    def build_router(self, i: int) -> Router:
        a, p = self.args, f"model.layers.{i}.mlp.gate"
        return Router(
            self.w.get(f"{p}.weight", torch.float32), a.num_experts_per_tok, scoring=a.scoring_func,
            norm_topk_prob=a.norm_topk_prob, routed_scaling_factor=a.routed_scaling_factor,
            n_group=a.n_group or 1, topk_group=a.topk_group or 1, group_score="top2_sum",
            correction_bias=self.w.maybe(f"{p}.e_score_correction_bias", torch.float32),
        )  # fmt: skip
