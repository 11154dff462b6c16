"""Qwen3-Next: Gated DeltaNet layers (linear_attention.py) with a gated full-attention
layer every `full_attention_interval` (per-head q/k RMSNorm, partial rotary, a sigmoid gate
on the output), RMSNorm weights stored zero-centred (scale 1 + w), and Qwen2-MoE's routing
with a sigmoid-gated shared expert. Linear layers keep a conv + recurrent state in the
StateCache, attention layers keys and values. Reference: transformers' modeling_qwen3_next.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from converters.archs.qwen3_next import layer_types
from converters.archs.spec import LINEAR_ATTENTION

from ..kv_cache import StateCache
from ..linear_attention import GatedDeltaNet
from . import qwen2_moe


@dataclass
class ModelArgs(qwen2_moe.ModelArgs):
    num_experts: int = 512
    num_experts_per_tok: int = 10
    moe_intermediate_size: int = 512
    norm_topk_prob: bool = True
    qkv_bias: bool = False
    full_attention_interval: int = 4
    layer_types: list[str] = field(default_factory=list)
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32

    def __post_init_args__(self, config: dict) -> None:
        super().__post_init_args__(config)
        self.layer_types = layer_types(config)


class Model(qwen2_moe.Model):
    Args = ModelArgs

    def __init__(self, args, weights, placement):
        super().__init__(args, weights, placement)
        for layer in self.layers:  # zero-centred: the scale is 1 + w
            layer.input_norm = 1.0 + layer.input_norm
            layer.post_attention_norm = 1.0 + layer.post_attention_norm
        self.norm = 1.0 + self.norm

    def is_linear(self, i: int) -> bool:
        return self.args.layer_types[i] == LINEAR_ATTENTION

    def build_attention(self, i: int):
        if self.is_linear(i):
            return self.linear_attention(i)
        p = f"model.layers.{i}.self_attn"
        return self.gqa(
            i,
            q_norm=1.0 + self.w.get(f"{p}.q_norm.weight"),
            k_norm=1.0 + self.w.get(f"{p}.k_norm.weight"),
            output_gate=True,
        )

    def linear_attention(self, i: int) -> GatedDeltaNet:
        w, p = self.w, f"model.layers.{i}.linear_attn"
        return GatedDeltaNet(
            in_qkvz=w.linear(f"{p}.in_proj_qkvz"),
            in_ba=w.linear(f"{p}.in_proj_ba"),
            **self.delta_net_parts(i),
        )

    def delta_net_parts(self, i: int) -> dict:
        a, w, p = self.args, self.w, f"model.layers.{i}.linear_attn"
        return dict(
            conv=w.get(f"{p}.conv1d.weight"),
            dt_bias=w.get(f"{p}.dt_bias"),
            a_log=w.get(f"{p}.A_log"),
            norm=w.get(f"{p}.norm.weight"),
            out=w.linear(f"{p}.out_proj"),
            k_heads=a.linear_num_key_heads,
            v_heads=a.linear_num_value_heads,
            k_dim=a.linear_key_head_dim,
            v_dim=a.linear_value_head_dim,
            layer=i,
            eps=a.rms_norm_eps,
            act=a.hidden_act,
        )

    def new_cache(self) -> StateCache:
        return StateCache(self.args.num_hidden_layers, self.args.max_position_embeddings)
