"""Gemma 4 (google/gemma-4-26B-A4B; the dense sizes too), as converters/archs/gemma4.py
describes it: sliding-window and global layers, the global ones with their own head size,
KV heads and proportional RoPE, K = V; q/k/v RMS-normalised, attention scale 1; the last
`num_kv_shared_layers` layers attend over the keys and values of the last earlier layer of
their kind; a dense GELU MLP beside the routed experts, the router on the residual; per-layer
inputs (PLE), a scalar on the whole residual stream per layer, embeddings times sqrt(hidden)
(rounded to the compute dtype, as transformers does), soft-capped logits. Norms compute as
Gemma4RMSNorm: float32, times w (not 1 + w) in float32, then cast; the attention is
normed_attention.py's; sliding layers keep only their window (kv_cache.WindowedKVCache).
Reference: transformers' models/gemma4
(modeling_gemma4.py, configuration_gemma4.py) and modeling_rope_utils.py
(`_compute_proportional_rope_parameters`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from converters.archs.gemma4 import SLIDING_ATTENTION, text_layer_types
from converters.archs.spec import FULL_ATTENTION
from converters.core.errors import BadModelFile, UnsupportedArchitecture

from ..config import BaseArgs, RopeParams
from ..kv_cache import WindowedKVCache
from ..layers import ACTIVATIONS, GatedMLP, Linear
from ..moe import MoEBlock, Router
from ..normed_attention import NormedAttention, SharedKV, normed
from ..rope import Rotary
from ..transformer import DecoderModel

# transformers' defaults when a config names no RoPE (Gemma4TextConfig.__post_init__)
DEFAULT_ROPE = {
    SLIDING_ATTENTION: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL_ATTENTION: {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                     "rope_theta": 1_000_000.0},
}  # fmt: skip


def layer_rotary(params: dict, head_dim: int) -> Rotary:
    """RoPE over the whole head. "proportional": the first partial_rotary_factor of the
    frequency pairs rotate at theta^(-2i/head_dim) (the exponent over the whole head, not
    the rotated part), the rest have frequency 0 and pass through."""
    p = RopeParams.from_config({"rope_parameters": params})
    rotary = Rotary(RopeParams(theta=p.theta), head_dim, 0, interleaved=False)
    if p.rope_type == "proportional":
        angles = int(p.partial_rotary_factor * head_dim // 2)
        exponents = torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / head_dim
        freqs = torch.zeros(head_dim // 2)
        freqs[:angles] = 1.0 / p.theta**exponents
        rotary.inv_freq = freqs / (p.factor or 1.0)
    elif p.rope_type != "default":
        raise UnsupportedArchitecture(
            f"Gemma 4 RoPE {p.rope_type!r} is not supported by the torch engine.",
            "Use the llama.cpp engine (convert to GGUF) for this model.",
        )
    return rotary


@dataclass
class ModelArgs(BaseArgs):
    # transformers' Gemma4TextConfig defaults for the fields a config may omit
    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 4
    head_dim: int | None = 256
    max_position_embeddings: int = 131_072
    tie_word_embeddings: bool = True
    sliding_window: int | None = 512
    hidden_activation: str = "gelu_pytorch_tanh"
    layer_types: list[str] = field(default_factory=list)
    rope_parameters: dict = field(default_factory=dict)
    global_head_dim: int = 512
    num_global_key_value_heads: int | None = None
    attention_k_eq_v: bool = False
    num_kv_shared_layers: int = 0
    final_logit_softcapping: float | None = None
    use_bidirectional_attention: str | None = None
    hidden_size_per_layer_input: int = 256
    vocab_size_per_layer_input: int = 262_144
    enable_moe_block: bool = False
    num_experts: int | None = None
    top_k_experts: int | None = None
    moe_intermediate_size: int | None = None

    def __post_init_args__(self, config: dict) -> None:
        if self.use_bidirectional_attention == "all":
            raise UnsupportedArchitecture(
                "This Gemma 4 config makes every token attend both ways (an encoder), "
                "which is not a chat model.",
                "Use a Gemma 4 checkpoint with causal attention.",
            )
        self.layer_types = text_layer_types(config)
        self.hidden_act = self.hidden_activation
        self.rope_parameters = {**DEFAULT_ROPE, **(self.rope_parameters or {})}

    def is_moe_layer(self, layer: int) -> bool:
        return self.enable_moe_block

    @property
    def n_experts(self) -> int:
        return int(self.num_experts or 0)

    @property
    def experts_per_token(self) -> int:
        return int(self.top_k_experts or 0)

    def is_sliding(self, i: int) -> bool:
        return self.layer_types[i] == SLIDING_ATTENTION

    def attention_shape(self, i: int) -> tuple[int, int, bool]:
        """(head dim, KV heads, K = V) of layer i (Gemma4TextConfig's per_layer_config)."""
        if self.is_sliding(i):
            return self.head_dim, self.num_key_value_heads, False
        kv = self.num_key_value_heads
        if self.attention_k_eq_v and self.num_global_key_value_heads is not None:
            kv = self.num_global_key_value_heads
        return self.global_head_dim, kv, self.attention_k_eq_v

    def kv_sources(self) -> dict[int, int]:
        """Shared-KV layer -> the layer whose keys and values it reads: the last layer of
        its kind before the shared ones (Gemma4TextConfig.kv_sharing_modes)."""
        n, first = self.num_hidden_layers, self.num_hidden_layers - self.num_kv_shared_layers
        if first >= n:
            return {}
        producers = {t: i for i, t in enumerate(self.layer_types[:first])}  # the last wins
        if first <= 0 or set(self.layer_types[first:]) - set(producers):
            raise BadModelFile(
                f"num_kv_shared_layers={self.num_kv_shared_layers} leaves a shared layer no "
                "earlier layer of its kind to take keys and values from.",
                "Check config.json's num_kv_shared_layers and layer_types.",
            )
        return {i: producers[self.layer_types[i]] for i in range(first, n)}


@dataclass
class Gemma4Router(Router):
    scale: torch.Tensor | None = None  # [H] float32
    per_expert_scale: torch.Tensor | None = None  # [E] float32
    eps: float = 1e-6

    def __call__(self, x: torch.Tensor, top_k: int | None = None):
        """x [T, H] (the residual, not the experts' normed input) -> (weights, experts)."""
        k = top_k or self.top_k
        if self.uniform is not None:
            return self._uniform(x.shape[0], k, x.device)
        h = normed(x.float(), None, self.eps) * self.scale * x.shape[-1] ** -0.5
        probs = F.linear(h, self.weight).softmax(dim=-1)  # [T, E]
        weights, experts = torch.topk(probs, k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[experts], experts


class Gemma4MoE(MoEBlock):
    """The routed experts, routed on the residual and run on its own normed copy."""

    def __call__(self, x: torch.Tensor, routed_on: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [T, H]
        weights, experts = self.router(routed_on.reshape(-1, shape[-1]), self.experts_per_token)
        if flat.shape[0] == 1:
            out = self._one_token(flat, weights[0], experts[0])
        else:
            out = self._grouped(flat, weights, experts)
        return out.view(shape)


@dataclass
class PerLayerInput:
    """PLE, in a layer: x + norm(projection(act(gate(x)) * its per-layer input))."""

    gate: Linear
    projection: Linear
    norm: torch.Tensor
    act: str
    eps: float

    def __call__(self, x: torch.Tensor, per_layer_input: torch.Tensor) -> torch.Tensor:
        h = ACTIVATIONS[self.act](self.gate(x)) * per_layer_input
        return x + normed(self.projection(h), self.norm, self.eps)


@dataclass
class Gemma4Layer:
    attn: NormedAttention
    mlp: GatedMLP
    ffn: Gemma4MoE | None  # `ffn`: where set_experts_per_token looks for the MoE block
    norms: dict[str, torch.Tensor]
    scalar: torch.Tensor  # [1] layer_scalar
    eps: float
    per_layer: PerLayerInput | None = None

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return normed(x, self.norms[name], self.eps)

    def __call__(self, x, cos, sin, cache, start, per_layer_input=None):
        h = self.attn(self.norm(x, "input_layernorm"), cos, sin, cache, start)
        x = x + self.norm(h, "post_attention_layernorm")
        h = self.mlp(self.norm(x, "pre_feedforward_layernorm"))
        if self.ffn is not None:
            routed = self.ffn(self.norm(x, "pre_feedforward_layernorm_2"), x)
            h = self.norm(h, "post_feedforward_layernorm_1") + self.norm(
                routed, "post_feedforward_layernorm_2"
            )
        x = x + self.norm(h, "post_feedforward_layernorm")
        if self.per_layer is not None:
            x = self.per_layer(x, per_layer_input)
        return x * self.scalar


NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
         "post_feedforward_layernorm")  # fmt: skip
MOE_NORMS = ("pre_feedforward_layernorm_2", "post_feedforward_layernorm_1",
             "post_feedforward_layernorm_2")  # fmt: skip


class Model(DecoderModel):
    Args = ModelArgs

    def __init__(self, args: ModelArgs, weights, placement):
        self.kv_sources = args.kv_sources()
        self.shared = {src: SharedKV() for src in set(self.kv_sources.values())}
        super().__init__(args, weights, placement)
        self.embed_scale = torch.tensor(args.hidden_size**0.5).to(self.dtype)
        self.ple = None
        if args.hidden_size_per_layer_input:
            w = self.w
            self.ple = (
                w.get("model.embed_tokens_per_layer.weight"),
                torch.tensor(args.hidden_size_per_layer_input**0.5).to(self.dtype),
                w.linear("model.per_layer_model_projection"),
                w.get("model.per_layer_projection_norm.weight"),
            )

    def make_rotary(self) -> Rotary:
        a = self.args
        first_of = {kind: i for i, kind in reversed(list(enumerate(a.layer_types)))}
        self.rotaries = {
            kind: layer_rotary(a.rope_parameters[kind], a.attention_shape(i)[0]).to(self.device)
            for kind, i in first_of.items()
        }
        return self.rotaries[a.layer_types[-1]]

    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.experts"

    def build_router(self, i: int) -> Gemma4Router:
        p = f"model.layers.{i}.router"
        return Gemma4Router(
            self.w.get(f"{p}.proj.weight", torch.float32), self.args.experts_per_token,
            scale=self.w.get(f"{p}.scale", torch.float32),
            per_expert_scale=self.w.get(f"{p}.per_expert_scale", torch.float32),
            eps=self.args.rms_norm_eps,
        )  # fmt: skip

    def build_attention(self, i: int) -> NormedAttention:
        a, w, p = self.args, self.w, f"model.layers.{i}.self_attn"
        head_dim, kv_heads, k_eq_v = a.attention_shape(i)
        reuse = i in self.kv_sources
        return NormedAttention(
            q=w.linear(f"{p}.q_proj"), o=w.linear(f"{p}.o_proj"),
            q_norm=w.get(f"{p}.q_norm.weight"),
            k=None if reuse else w.linear(f"{p}.k_proj"),
            v=None if reuse or k_eq_v else w.linear(f"{p}.v_proj"),
            k_norm=None if reuse else w.get(f"{p}.k_norm.weight"),
            n_heads=a.num_attention_heads, n_kv_heads=kv_heads, head_dim=head_dim,
            rotary=self.rotaries[a.layer_types[i]], layer=i, eps=a.rms_norm_eps,
            window=a.sliding_window if a.is_sliding(i) else None,
            shared=self.shared.get(self.kv_sources.get(i, i)), reuse=reuse,
        )  # fmt: skip

    def _build_layer(self, i: int) -> Gemma4Layer:
        a, p = self.args, f"model.layers.{i}"
        ffn = None
        if i in self.moe_layers:
            router = self.build_router(i)
            if self.placement.uniform_routing_seed is not None:
                seed = self.placement.uniform_routing_seed + i
                router.uniform = torch.Generator().manual_seed(seed)
            ffn = Gemma4MoE(self.moe_layers.index(i), router, self.cache, self.usage,
                            fused=self.fused)  # fmt: skip
        names = NORMS + (MOE_NORMS if ffn is not None else ())
        per_layer = None
        if a.hidden_size_per_layer_input:
            per_layer = PerLayerInput(
                self.w.linear(f"{p}.per_layer_input_gate"),
                self.w.linear(f"{p}.per_layer_projection"),
                self.w.get(f"{p}.post_per_layer_input_norm.weight"), a.hidden_act, a.rms_norm_eps,
            )  # fmt: skip
        return Gemma4Layer(
            self.build_attention(i), self.mlp(f"{p}.mlp"), ffn,
            {n: self.w.get(f"{p}.{n}.weight") for n in names},
            self.w.get(f"{p}.layer_scalar"), a.rms_norm_eps, per_layer,
        )  # fmt: skip

    def new_cache(self) -> WindowedKVCache:
        a = self.args
        windows = {
            i: a.sliding_window
            for i in range(a.num_hidden_layers)
            if a.is_sliding(i) and i not in self.kv_sources
        }
        return WindowedKVCache(a.num_hidden_layers, a.max_position_embeddings, windows)

    def per_layer_inputs(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[B, T, layers, P]: (norm(projection(x) / sqrt(hidden)) + the token's own per-layer
        embedding * sqrt(P)) / sqrt(2) (Gemma4TextModel.project_per_layer_inputs)."""
        a = self.args
        table, scale, projection, norm = self.ple
        shape = (*tokens.shape, a.num_hidden_layers, a.hidden_size_per_layer_input)
        own = (table[tokens] * scale).reshape(shape)
        projected = (projection(x) * a.hidden_size**-0.5).reshape(shape)
        return (normed(projected, norm, a.rms_norm_eps) + own) * 2.0**-0.5

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, cache: WindowedKVCache, all_logits: bool = False
    ) -> torch.Tensor:
        """tokens [B, T] at positions cache.length.. -> logits [B, T, V] (or [B, 1, V])."""
        a, start = self.args, cache.length
        tokens = tokens.to(self.device)
        positions = torch.arange(start, start + tokens.shape[1], device=self.device)
        cos_sin = {kind: r.cos_sin(positions, self.dtype) for kind, r in self.rotaries.items()}
        if self.cache is not None:
            self.cache.begin_step()
        x = self.embed[tokens] * self.embed_scale
        per_layer = self.per_layer_inputs(tokens, x) if self.ple is not None else None
        for i, layer in enumerate(self.layers):
            cos, sin = cos_sin[a.layer_types[i]]
            x = layer(x, cos, sin, cache, start, None if per_layer is None else per_layer[:, :, i])
        cache.length = start + tokens.shape[1]
        if not all_logits:
            x = x[:, -1:]
        logits = self.lm_head(normed(x, self.norm, a.rms_norm_eps)).float()
        if cap := a.final_logit_softcapping:
            logits = torch.tanh(logits / cap) * cap
        return logits
