"""DeepSeek-V4 (Flash, Pro), read under DeepSeek's own tensor names as published
(`layers.N.attn.wq_a.weight`, `layers.N.ffn.experts.E.w1.weight`, `hc_head_fn`, ...), its
FP8 projections and FP4 experts dequantized exactly at load (converters/formats/
e8m0_scales.py).

Per layer: hyper-connection mixers around each block (engine/torch/hyper_connections.py);
shared-KV attention over a sliding window, with compressed entries in CSA / HCA layers
(engine/torch/compressed_attention.py, compressor.py), the layer's kind from the published
`compress_ratios` or transformers' `layer_types` (the registry's `attention_schedule`); an MoE
block of routed experts (SwiGLU with `swiglu_limit` clamps) and one shared expert, routed
by sqrt(softplus) scores with a correction bias, or, in the first `num_hash_layers`, by a
fixed token -> experts table (`tid2eid`) with the router's scores as weights.
The MTP layer (`mtp.0.*`) is not used.
References: DeepSeek-V4 paper; transformers' modeling_deepseek_v4.py; llama.cpp's
src/models/deepseek4.cpp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from converters.archs import deepseek_v4 as arch

from ..compressed_attention import CompressedCache, SharedKVAttention
from ..compressor import Compressor, Indexer
from ..config import BaseArgs, RopeParams
from ..hyper_connections import HyperConnection, HyperHead
from ..layers import CLAMPED_SILU, GatedMLP, rms_norm
from ..moe import ExpertUsage, MoEBlock, Router
from ..rope import Rotary
from ..transformer import DecoderModel, PlacementOptions
from ..weights import Weights

SLIDING, CSA = arch.SLIDING, arch.CSA


@dataclass
class ModelArgs(BaseArgs):
    moe_intermediate_size: int = 2048
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 6
    scoring_func: str = "sqrtsoftplus"
    routed_scaling_factor: float = 1.5
    num_hash_layers: int = 3
    swiglu_limit: float = 10.0
    sliding_window: int | None = 128
    compress_ratios: list | None = None  # as published: one ratio per layer (+ MTP's)
    compress_rope_theta: float = 160000.0
    rope_theta: float = 10000.0
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    qk_rope_head_dim: int | None = None
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    # transformers' spellings of the same schedule, where a config was saved by it
    layer_types: list | None = None
    mlp_layer_types: list | None = None
    compress_rates: dict | None = None
    partial_rotary_factor: float | None = None
    # derived: per layer (kind, ratio) and whether its experts are hash-routed
    attention: list = field(default_factory=list)
    hashed: list = field(default_factory=list)

    def __post_init_args__(self, config: dict) -> None:
        self.attention = arch.attention_schedule(config)
        self.hashed = arch.hashed_layers(config)
        if self.qk_rope_head_dim is None:  # transformers' default: 64 of a 512-dim head
            self.qk_rope_head_dim = int(self.head_dim * (self.partial_rotary_factor or 0.125))

    def rope_params(self, compressed: bool) -> RopeParams:
        """Sliding layers: plain RoPE at rope_theta. Compressed layers and their compressors:
        compress_rope_theta with the published YaRN scaling, cos/sin left unscaled (V4's
        reference multiplies by no mscale; transformers sets attention_factor 1)."""
        if not compressed:
            return RopeParams(theta=float(self.rope_theta))
        p = dataclasses.replace(self.rope, theta=float(self.compress_rope_theta))
        p.partial_rotary_factor = 1.0
        if p.rope_type == "yarn":
            p.attention_factor = 1.0
        return p

    def is_moe_layer(self, layer: int) -> bool:
        return True

    @property
    def n_experts(self) -> int:
        return self.n_routed_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok


@dataclass
class HashRouter:
    """Experts from the token's row of `table`; weights from the router's scores."""

    router: Router
    table: torch.Tensor  # [vocab, K] int64

    def __call__(self, flat: torch.Tensor, tokens: torch.Tensor):
        scores = self.router.scores(flat)  # [T, E]
        experts = self.table[tokens.reshape(-1)]
        weights = scores.gather(1, experts)
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * self.router.routed_scaling_factor, experts


@dataclass
class Layer:
    attn: SharedKVAttention
    ffn: MoEBlock
    hash_router: HashRouter | None
    attn_hc: HyperConnection
    ffn_hc: HyperConnection
    attn_norm: torch.Tensor
    ffn_norm: torch.Tensor
    eps: float

    def __call__(self, streams, tokens, positions, cache):
        post, comb, x = self.attn_hc(streams)
        out = self.attn(rms_norm(x, self.attn_norm, self.eps), positions, cache)
        streams = HyperConnection.merge(streams, out, post, comb)
        post, comb, x = self.ffn_hc(streams)
        x = rms_norm(x, self.ffn_norm, self.eps)
        if self.hash_router is None:
            out = self.ffn(x)
        else:
            out = self.ffn.mix(x, *self.hash_router(x.reshape(-1, x.shape[-1]), tokens))
        return HyperConnection.merge(streams, out, post, comb)


class Model(DecoderModel):
    Args = ModelArgs
    expert_names = ("w1", "w3", "w2")  # gate, up, down

    def __init__(self, args: ModelArgs, weights: Weights, placement: PlacementOptions):
        self.args, self.w, self.placement = args, weights, placement
        self.dtype, self.device = weights.dtype, weights.device
        self.rotaries = {c: self._rotary(c) for c in (False, True)}
        self.moe_layers = list(range(args.num_hidden_layers))
        self.usage = ExpertUsage(len(self.moe_layers), args.n_experts)
        self.cache = self._make_cache(placement)
        self.fused, self.compile_s = self._compile_experts(placement.compile)
        self.embed = weights.get("embed.weight")
        self.layers = [self._build_layer(i) for i in range(args.num_hidden_layers)]
        self.norm = weights.get("norm.weight")
        self.hc_head = HyperHead(
            *self._f32("hc_head_fn", "hc_head_base", "hc_head_scale"),
            eps=args.hc_eps,
            norm_eps=args.rms_norm_eps,
        )
        self.lm_head = weights.linear("head")

    def _rotary(self, compressed: bool) -> Rotary:
        a = self.args
        rotary = Rotary(
            a.rope_params(compressed),
            a.qk_rope_head_dim,
            a.max_position_embeddings,
            interleaved=True,
        )
        return rotary.to(self.device)

    def _f32(self, *names: str) -> list[torch.Tensor]:
        return [self.w.get(n, torch.float32) for n in names]

    def moe_prefix(self, i: int) -> str:
        return f"layers.{i}.ffn.experts"

    def expert_act(self) -> str:
        return f"{CLAMPED_SILU}{self.args.swiglu_limit}"

    def _build_layer(self, i: int) -> Layer:
        a, w, p = self.args, self.w, f"layers.{i}"
        shared = GatedMLP(
            w.linear(f"{p}.ffn.shared_experts.w1"),
            w.linear(f"{p}.ffn.shared_experts.w3"),
            w.linear(f"{p}.ffn.shared_experts.w2"),
            self.expert_act(),
        )
        router = Router(
            w.get(f"{p}.ffn.gate.weight", torch.float32),
            a.num_experts_per_tok,
            scoring=a.scoring_func,
            norm_topk_prob=True,
            routed_scaling_factor=a.routed_scaling_factor,
            correction_bias=w.maybe(f"{p}.ffn.gate.bias", torch.float32),
        )
        if self.placement.uniform_routing_seed is not None:
            router.uniform = torch.Generator().manual_seed(self.placement.uniform_routing_seed + i)
        hashed = None
        if a.hashed[i]:
            table = w.get(f"{p}.ffn.gate.tid2eid", torch.int64)
            hashed = HashRouter(router, table)
        ffn = MoEBlock(i, router, self.cache, self.usage, shared, fused=self.fused)
        hc = {
            part: HyperConnection(
                *self._f32(f"{p}.hc_{part}_fn", f"{p}.hc_{part}_base", f"{p}.hc_{part}_scale"),
                n_streams=a.hc_mult,
                sinkhorn_iters=a.hc_sinkhorn_iters,
                eps=a.hc_eps,
                norm_eps=a.rms_norm_eps,
            )
            for part in ("attn", "ffn")
        }
        return Layer(
            self._attention(i),
            ffn,
            hashed,
            hc["attn"],
            hc["ffn"],
            w.get(f"{p}.attn_norm.weight"),
            w.get(f"{p}.ffn_norm.weight"),
            a.rms_norm_eps,
        )

    def _attention(self, i: int) -> SharedKVAttention:
        a, w, p = self.args, self.w, f"layers.{i}.attn"
        kind, ratio = a.attention[i]
        rotary = self.rotaries[kind != SLIDING]
        compressor = indexer = None
        if kind != SLIDING:
            compressor = self._compressor(f"{p}.compressor", ratio, a.head_dim, kind == CSA)
        if kind == CSA:
            indexer = Indexer(
                self._compressor(f"{p}.indexer.compressor", ratio, a.index_head_dim, True),
                w.linear(f"{p}.indexer.wq_b"),
                w.linear(f"{p}.indexer.weights_proj"),
                a.index_n_heads,
                a.index_head_dim,
                a.index_topk,
            )
        return SharedKVAttention(
            w.linear(f"{p}.wq_a"),
            w.get(f"{p}.q_norm.weight"),
            w.linear(f"{p}.wq_b"),
            w.linear(f"{p}.wkv"),
            w.get(f"{p}.kv_norm.weight"),
            w.get(f"{p}.wo_a.weight"),
            w.linear(f"{p}.wo_b"),
            w.get(f"{p}.attn_sink", torch.float32),
            a.num_attention_heads,
            a.head_dim,
            a.sliding_window,
            a.o_groups,
            rotary,
            i,
            a.rms_norm_eps,
            compressor,
            indexer,
        )

    def _compressor(self, p: str, ratio: int, head_dim: int, overlap: bool) -> Compressor:
        w = self.w
        return Compressor(
            w.linear(f"{p}.wkv"),
            w.linear(f"{p}.wgate"),
            w.get(f"{p}.ape", torch.float32),
            w.get(f"{p}.norm.weight"),
            ratio,
            head_dim,
            overlap,
            self.rotaries[True],
            self.args.rms_norm_eps,
        )

    def new_cache(self) -> CompressedCache:
        return CompressedCache(self.args.num_hidden_layers, self.args.max_position_embeddings)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, cache: CompressedCache, all_logits: bool = False
    ) -> torch.Tensor:
        """tokens [B, T] at positions cache.length.. -> logits [B, T, V] (or [B, 1, V])."""
        start = cache.length
        tokens = tokens.to(self.device)
        positions = torch.arange(start, start + tokens.shape[1], device=self.device)
        self.cache.begin_step()
        x = self.embed[tokens]  # [B, T, D]
        streams = x.unsqueeze(2).expand(-1, -1, self.args.hc_mult, -1).contiguous()
        for layer in self.layers:
            streams = layer(streams, tokens, positions, cache)
        cache.length = start + tokens.shape[1]
        x = self.hc_head(streams)
        if not all_logits:
            x = x[:, -1:]
        return self.lm_head(rms_norm(x, self.norm, self.args.rms_norm_eps)).float()
