"""Mixtral: Llama attention (GQA, sliding window if set) with a top-k softmax MoE whose
weights are always renormalised. Reference: transformers' modeling_mixtral.py; experts are
`block_sparse_moe.experts.{e}.w1` (gate), `w3` (up), `w2` (down) as Mistral publishes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import BaseArgs
from ..moe import Router
from ..transformer import DecoderModel


@dataclass
class ModelArgs(BaseArgs):
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    rms_norm_eps: float = 1e-5
    default_theta = 1e6

    def is_moe_layer(self, layer: int) -> bool:
        return True

    @property
    def n_experts(self) -> int:
        return self.num_local_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok


class Model(DecoderModel):
    Args = ModelArgs
    expert_names = ("w1", "w3", "w2")

    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.block_sparse_moe.experts"

    def build_router(self, i: int) -> Router:
        weight = self.w.get(f"model.layers.{i}.block_sparse_moe.gate.weight", torch.float32)
        return Router(weight, self.args.num_experts_per_tok, norm_topk_prob=True)
