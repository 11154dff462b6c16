"""Nemotron-H (Nemotron-3-Nano): every layer one mixer behind an RMSNorm and a residual, of
the kind `hybrid_override_pattern` names (converters/archs/nemotron_h.py): Mamba-2
(mamba2.py; its conv and SSM state in the StateCache), softmax attention without any
position encoding (the KV cache), or MoE with DeepSeek-V3's routing (sigmoid scores, a
correction bias that steers the choice only, group-limited top-k, renormalised, scaled by
`routed_scaling_factor`) over ReLU^2 experts and one shared ReLU^2 expert.

The experts have no gate: down(relu(up x)^2). Since relu(u)^2 = relu(u) * u exactly, they
run as the engine's gated experts act(gate x) * up x with act = relu and the up projection
as both gate and up (the expert slots then hold up twice: half as many bytes again per
expert as the model's own two matrices, and a third more work per expert; an ungated expert
kind in the expert cache would save both). Reference: transformers' modeling_nemotron_h.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from converters.archs.nemotron_h import layer_types
from converters.archs.spec import FULL_ATTENTION, LINEAR_ATTENTION

from ..attention import GQAttention
from ..config import BaseArgs
from ..kv_cache import StateCache
from ..layers import GatedMLP, rms_norm
from ..mamba2 import Mamba2Mixer
from ..moe import Router
from ..transformer import DecoderModel

RELU_SQUARED = "relu"  # gated as relu(u) * u (see the module doc)


@dataclass
class ModelArgs(BaseArgs):
    n_routed_experts: int = 128
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 1856
    moe_shared_expert_intermediate_size: int = 3712
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    n_groups: int = 8
    ssm_state_size: int = 128
    conv_kernel: int = 4
    chunk_size: int = 128
    time_step_min: float = 0.001
    layer_norm_epsilon: float = 1e-5
    mlp_hidden_act: str = "relu2"
    layer_types: list[str] = field(default_factory=list)

    def __post_init_args__(self, config: dict) -> None:
        self.layer_types = layer_types(config)
        self.num_hidden_layers = len(self.layer_types)
        self.rms_norm_eps = self.layer_norm_epsilon

    def is_moe_layer(self, layer: int) -> bool:
        return self.layer_types[layer] == "moe"

    @property
    def n_experts(self) -> int:
        return self.n_routed_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok


class NoRotary:
    """Nemotron-H's attention has no position encoding."""

    def to(self, device) -> NoRotary:
        return self

    def cos_sin(self, positions, dtype):
        return None, None

    def apply(self, x, cos, sin):
        return x


@dataclass
class MixerLayer:
    """x + mixer(norm(x)); `attn` / `ffn` are the mixer where it is one (the engine's MoE
    bookkeeping looks for MoE blocks as `ffn`)."""

    kind: str
    mixer: object
    norm: torch.Tensor
    eps: float

    @property
    def attn(self):
        return self.mixer if self.kind == FULL_ATTENTION else None

    @property
    def ffn(self):
        return self.mixer if self.kind in ("moe", "mlp") else None

    def __call__(self, x, cos, sin, cache, start):
        h = rms_norm(x, self.norm, self.eps)
        if self.kind == FULL_ATTENTION:
            return x + self.mixer(h, cos, sin, cache, start)
        if self.kind == LINEAR_ATTENTION:
            return x + self.mixer(h, cache)
        return x + self.mixer(h)


class Model(DecoderModel):
    Args = ModelArgs
    expert_names = ("up_proj", "up_proj", "down_proj")  # gate = up: relu(u) * u
    embed_name, norm_name = "model.embeddings.weight", "model.norm_f.weight"

    def make_rotary(self) -> NoRotary:
        return NoRotary()

    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.mixer.experts"

    def expert_act(self) -> str:
        return RELU_SQUARED

    def build_router(self, i: int) -> Router:
        a, p = self.args, f"model.layers.{i}.mixer.gate"
        return Router(
            self.w.get(f"{p}.weight", torch.float32), a.num_experts_per_tok, scoring="sigmoid",
            norm_topk_prob=a.norm_topk_prob, routed_scaling_factor=a.routed_scaling_factor,
            n_group=a.n_group or 1, topk_group=a.topk_group or 1, group_score="top2_sum",
            correction_bias=self.w.maybe(f"{p}.e_score_correction_bias", torch.float32),
        )  # fmt: skip

    def relu2_mlp(self, prefix: str) -> GatedMLP:
        up = self.w.linear(f"{prefix}.up_proj")
        return GatedMLP(up, up, self.w.linear(f"{prefix}.down_proj"), RELU_SQUARED)

    def build_shared(self, i: int):
        return self.relu2_mlp(f"model.layers.{i}.mixer.shared_experts"), None

    def build_dense_mlp(self, i: int) -> GatedMLP:
        return self.relu2_mlp(f"model.layers.{i}.mixer")

    def build_attention(self, i: int):
        a, p = self.args, f"model.layers.{i}.mixer"
        return GQAttention(
            q=self.w.linear(f"{p}.q_proj"), k=self.w.linear(f"{p}.k_proj"),
            v=self.w.linear(f"{p}.v_proj"), o=self.w.linear(f"{p}.o_proj"),
            n_heads=a.num_attention_heads, n_kv_heads=a.num_key_value_heads,
            head_dim=a.head_dim, rotary=self.rotary, layer=i, eps=a.rms_norm_eps,
        )  # fmt: skip

    def mamba(self, i: int) -> Mamba2Mixer:
        a, w, p = self.args, self.w, f"model.layers.{i}.mixer"
        return Mamba2Mixer(
            in_proj=w.linear(f"{p}.in_proj"), conv=w.get(f"{p}.conv1d.weight"),
            conv_bias=w.maybe(f"{p}.conv1d.bias"), dt_bias=w.get(f"{p}.dt_bias"),
            a_log=w.get(f"{p}.A_log"), d=w.get(f"{p}.D"), norm=w.get(f"{p}.norm.weight"),
            out=w.linear(f"{p}.out_proj"), heads=a.mamba_num_heads, head_dim=a.mamba_head_dim,
            groups=a.n_groups, state_size=a.ssm_state_size, layer=i, chunk=a.chunk_size,
            dt_min=a.time_step_min, eps=a.layer_norm_epsilon,
        )  # fmt: skip

    def _build_layer(self, i: int) -> MixerLayer:
        kind = self.args.layer_types[i]
        if kind == "moe":
            mixer = self.build_moe(i)
        elif kind == LINEAR_ATTENTION:
            mixer = self.mamba(i)
        elif kind == FULL_ATTENTION:
            mixer = self.build_attention(i)
        else:
            mixer = self.build_dense_mlp(i)
        norm = self.w.get(f"model.layers.{i}.norm.weight")
        return MixerLayer(kind, mixer, norm, self.args.rms_norm_eps)

    def new_cache(self) -> StateCache:
        return StateCache(self.args.num_hidden_layers, self.args.max_position_embeddings)
