"""gpt-oss-20b / -120b: GQA with biases and a sink logit per head, sliding-window attention
on the layers `layer_types` names (even ones as published), YaRN; every layer MoE with a
biased router (softmax over the top-k logits) and experts with biases and a clamped SwiGLU.
Experts are read from the published MXFP4 blocks and dequantized exactly
(converters/formats/mxfp4.py). Reference: transformers' modeling_gpt_oss.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention import GQAttention
from ..config import BaseArgs
from ..layers import CLAMPED_SWIGLU
from ..moe import Router
from ..transformer import DecoderModel


@dataclass
class ModelArgs(BaseArgs):
    num_local_experts: int = 128
    num_experts_per_tok: int = 4
    swiglu_limit: float = 7.0
    layer_types: list[str] = field(default_factory=list)
    rms_norm_eps: float = 1e-5
    default_theta = 150000.0

    def __post_init_args__(self, config: dict) -> None:
        if not self.layer_types:  # transformers' default: sliding on even layers
            self.layer_types = [
                "sliding_attention" if i % 2 == 0 else "full_attention"
                for i in range(self.num_hidden_layers)
            ]

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

    def build_attention(self, i: int) -> GQAttention:
        a, p = self.args, f"model.layers.{i}.self_attn"
        sliding = a.layer_types[i] == "sliding_attention"
        return GQAttention(
            q=self.w.linear(f"{p}.q_proj"), k=self.w.linear(f"{p}.k_proj"),
            v=self.w.linear(f"{p}.v_proj"), o=self.w.linear(f"{p}.o_proj"),
            n_heads=a.num_attention_heads, n_kv_heads=a.num_key_value_heads,
            head_dim=a.head_dim, rotary=self.rotary, layer=i, eps=a.rms_norm_eps,
            sliding_window=a.sliding_window if sliding else None,
            sinks=self.w.get(f"{p}.sinks", torch.float32),
        )  # fmt: skip

    def build_router(self, i: int) -> Router:
        p = f"model.layers.{i}.mlp.router"
        weight = self.w.get(f"{p}.weight", torch.float32)
        bias = self.w.get(f"{p}.bias", torch.float32)
        return Router(weight, self.args.num_experts_per_tok, bias=bias, norm_topk_prob=True)

    def expert_act(self) -> str:
        return f"{CLAMPED_SWIGLU}{self.args.swiglu_limit}"
