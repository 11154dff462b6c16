"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): qkv bias, softmax top-k (renormalised only if
`norm_topk_prob`), and a shared expert scaled by sigmoid(shared_expert_gate(x)). Layers are
MoE unless listed in `mlp_only_layers` or off the `decoder_sparse_step` stride.
Reference: transformers' modeling_qwen2_moe.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import BaseArgs
from ..layers import GatedMLP, Linear
from ..moe import Router
from ..transformer import DecoderModel


@dataclass
class ModelArgs(BaseArgs):
    num_experts: int = 60
    num_experts_per_tok: int = 4
    moe_intermediate_size: int = 1408
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    use_sliding_window: bool = False
    qkv_bias: bool = True

    def __post_init_args__(self, config: dict) -> None:
        if not self.use_sliding_window:
            self.sliding_window = None

    def is_moe_layer(self, layer: int) -> bool:
        return (
            layer not in (self.mlp_only_layers or [])
            and self.num_experts > 0
            and (layer + 1) % self.decoder_sparse_step == 0
        )

    @property
    def n_experts(self) -> int:
        return self.num_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok


class Model(DecoderModel):
    Args = ModelArgs

    def build_router(self, i: int) -> Router:
        a = self.args
        weight = self.w.get(f"model.layers.{i}.mlp.gate.weight", torch.float32)
        return Router(weight, a.num_experts_per_tok, norm_topk_prob=a.norm_topk_prob)

    def build_shared(self, i: int) -> tuple[GatedMLP | None, Linear | None]:
        p = f"model.layers.{i}.mlp"
        if not self.w.has(f"{p}.shared_expert.gate_proj.weight"):
            return None, None
        return self.mlp(f"{p}.shared_expert"), self.w.linear(f"{p}.shared_expert_gate")
