"""Llama 4 (Scout, Maverick): the text model of the vision-language release.

MoE layers every `interleave_moe_layer_step`-th layer (or as `moe_layers` lists), dense
SwiGLU layers `intermediate_size_mlp` wide between them; each MoE layer routes top-k by
the sigmoid of the router's logits, the weight scaling the expert's input, and adds a
shared expert. Attention: chunked local attention with Llama 4's RoPE (adjacent pairs) and
L2 q/k norm on the layers `no_rope_layers` marks 1, global NoPE attention with temperature
tuning on the others (chunked_attention.py). Names follow the checkpoint's
`feed_forward.*`; the fused experts, stored [E, in, out], are read transposed by
HFCheckpoint. Reference: transformers' modeling_llama4.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..chunked_attention import ChunkedAttention
from ..config import BaseArgs
from ..layers import GatedMLP, Linear
from ..moe import MoEBlock, Router
from ..rope import Rotary
from ..transformer import DecoderModel


@dataclass
class ModelArgs(BaseArgs):
    num_local_experts: int = 16
    num_experts_per_tok: int = 1
    intermediate_size: int = 8192  # routed and shared experts
    intermediate_size_mlp: int = 16384  # dense layers
    interleave_moe_layer_step: int = 1
    moe_layers: list[int] | None = None
    no_rope_layers: list[int] = field(default_factory=list)  # 1: RoPE + chunked, 0: NoPE
    no_rope_layer_interval: int = 4
    attention_chunk_size: int | None = 8192
    use_qk_norm: bool = True
    attn_temperature_tuning: bool = True
    floor_scale: int = 8192
    attn_scale: float = 0.1
    rms_norm_eps: float = 1e-5
    default_theta = 500000.0

    def __post_init_args__(self, config: dict) -> None:
        """transformers' defaults (Llama4TextConfig.__post_init__)."""
        n = self.num_hidden_layers
        if not self.no_rope_layers:
            self.no_rope_layers = [
                int((i + 1) % self.no_rope_layer_interval != 0) for i in range(n)
            ]
        if self.moe_layers is None:
            step = self.interleave_moe_layer_step
            self.moe_layers = list(range(step - 1, n, step))

    def is_moe_layer(self, layer: int) -> bool:
        return layer in self.moe_layers

    @property
    def n_experts(self) -> int:
        return self.num_local_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok


class Model(DecoderModel):
    Args = ModelArgs

    def __init__(self, args, weights, placement):
        super().__init__(args, weights, placement)
        for layer in self.layers:
            if isinstance(layer.ffn, MoEBlock):
                layer.ffn.weight_input = True

    def make_rotary(self) -> Rotary:
        a = self.args  # Llama 4 rotates adjacent pairs (apply_rotary_emb's complex view)
        return Rotary(a.rope, a.head_dim, a.max_position_embeddings, interleaved=True)

    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.feed_forward.experts"

    def _compile_experts(self, wanted):
        return None, 0.0  # the compiled kernel weights expert outputs; Llama 4 weights inputs

    def build_attention(self, i: int) -> ChunkedAttention:
        a, p = self.args, f"model.layers.{i}.self_attn"
        rope = bool(a.no_rope_layers[i])
        return ChunkedAttention(
            q=self.w.linear(f"{p}.q_proj"), k=self.w.linear(f"{p}.k_proj"),
            v=self.w.linear(f"{p}.v_proj"), o=self.w.linear(f"{p}.o_proj"),
            n_heads=a.num_attention_heads, n_kv_heads=a.num_key_value_heads,
            head_dim=a.head_dim, rotary=self.rotary if rope else None, layer=i,
            eps=a.rms_norm_eps,
            chunk_size=a.attention_chunk_size if rope else None,
            qk_l2_norm=a.use_qk_norm and rope,
            temperature=(
                (float(a.floor_scale), a.attn_scale)
                if a.attn_temperature_tuning and not rope else None
            ),
        )  # fmt: skip

    def build_router(self, i: int) -> Router:
        weight = self.w.get(f"model.layers.{i}.feed_forward.router.weight", torch.float32)
        return Router(weight, self.args.num_experts_per_tok, scoring="sigmoid")

    def build_shared(self, i: int) -> tuple[GatedMLP | None, Linear | None]:
        return self.mlp(f"model.layers.{i}.feed_forward.shared_expert"), None

    def build_dense_mlp(self, i: int) -> GatedMLP:
        return self.mlp(f"model.layers.{i}.feed_forward")
