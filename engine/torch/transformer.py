"""The decoder every architecture shares: embeddings, pre-norm layers, final norm, lm_head.

An architecture file (models/<model_type>.py) subclasses `DecoderModel` and overrides the
few methods where it differs (attention, router, shared experts, expert names), in the
spirit of mlx-lm's one-file-per-model layout. Placement of experts is decided here once
for the whole model: one `ExpertCache` serves every MoE layer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .attention import GQAttention
from .compiled import FusedExperts, compile_wanted
from .compiled_step import DecodeStep, eligible
from .config import BaseArgs
from .experts import stacked_views
from .kv_cache import KVCache
from .layers import GatedMLP, Linear, rms_norm
from .moe import ExpertUsage, MoEBlock, Router
from .overlap import TierOverlap, overlap_mode
from .placement import ExpertCache
from .prefetch import NextLayerPrefetch, default_copier, make_copier, prefetch_mode
from .rope import Rotary
from .weights import Weights


@dataclass
class PlacementOptions:
    """Where experts live. `expert_budget`: a fraction (<= 1) of all routed experts' bytes,
    or a byte count (> 1), kept on the fast tier; None keeps them all."""

    expert_budget: float | int | None = None
    policy: str = "lru"
    on_miss: str = "auto"
    expert_usage: list[list[int]] | None = None  # recorded counts -> the static hot set
    uniform_routing_seed: int | None = None  # benchmarks only: ignore the router (see Router)
    preload: bool = True  # when every expert fits the budget, move them in at load
    # decode's routed experts through the compiled kernel: "auto" | True | False (compiled.py)
    compile: bool | str = "auto"
    # next-layer expert prefetch (prefetch.py): "off" | "next_layer"; copier: "auto" (a
    # thread on the CPU, a side stream on CUDA) | "thread" | "sync" | "cuda"
    prefetch: str = "off"
    prefetch_copier: str = "auto"
    # decode's resident and missed experts at once (overlap.py): "auto" (on with CUDA) | on | off
    overlap: str = "auto"


def default_fast_tier_bytes(device: torch.device) -> int:
    """Half of the free memory of the fast tier: GPU memory on CUDA, available RAM otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    import psutil

    return psutil.virtual_memory().available // 2


def hot_set_from_usage(usage: list[list[int]]) -> list[tuple[int, int]]:
    """(layer, expert) pairs, most used first."""
    pairs = [(c, layer, e) for layer, row in enumerate(usage) for e, c in enumerate(row)]
    return [(layer, e) for c, layer, e in sorted(pairs, key=lambda p: -p[0]) if c > 0]


@dataclass
class DecoderLayer:
    attn: object
    ffn: object  # GatedMLP or MoEBlock
    input_norm: torch.Tensor
    post_attention_norm: torch.Tensor
    eps: float

    def __call__(self, x, cos, sin, cache, start):
        x = x + self.attn(rms_norm(x, self.input_norm, self.eps), cos, sin, cache, start)
        return x + self.ffn(rms_norm(x, self.post_attention_norm, self.eps))


class DecoderModel:
    """Subclasses set `Args` and override the build_* hooks they need."""

    Args = BaseArgs
    expert_names = ("gate_proj", "up_proj", "down_proj")  # gate, up, down
    # the root tensors' names (Nemotron-H publishes its own, read under `model.`)
    embed_name, norm_name = "model.embed_tokens.weight", "model.norm.weight"

    def __init__(self, args: BaseArgs, weights: Weights, placement: PlacementOptions):
        self.args, self.w, self.placement = args, weights, placement
        self.dtype, self.device = weights.dtype, weights.device
        self.rotary = self.make_rotary().to(self.device)
        self.moe_layers = [i for i in range(args.num_hidden_layers) if args.is_moe_layer(i)]
        self.usage = ExpertUsage(len(self.moe_layers), max(args.n_experts, 1))
        self.cache = self._make_cache(placement) if self.moe_layers else None
        self.fused, self.compile_s = self._compile_experts(placement.compile)
        mode = overlap_mode(placement.overlap)
        self.overlap = TierOverlap.for_mode(mode, self.device) if self.cache else None
        self.embed = weights.get(self.embed_name)
        self.layers = [self._build_layer(i) for i in range(args.num_hidden_layers)]
        self.norm = weights.get(self.norm_name)
        if weights.has("lm_head.weight"):
            self.lm_head = weights.linear("lm_head")
        else:  # tie_word_embeddings
            self.lm_head = Linear(self.embed)
        self.prefetch = self._make_prefetch(placement)
        self.step = None if self.prefetch else self._compile_step(placement.compile)

    # -- hooks ----------------------------------------------------------------------------

    def make_rotary(self) -> Rotary:
        a = self.args
        return Rotary(a.rope, a.head_dim, a.max_position_embeddings, interleaved=False)

    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.mlp.experts"

    def build_attention(self, i: int):
        return self.gqa(i)

    def build_router(self, i: int) -> Router:
        raise NotImplementedError

    def expert_act(self) -> str:
        """The routed experts' gated activation (layers.gated_activation names it)."""
        return self.args.hidden_act

    def build_shared(self, i: int) -> tuple[GatedMLP | None, Linear | None]:
        return None, None

    def build_dense_mlp(self, i: int) -> GatedMLP:
        return self.mlp(f"model.layers.{i}.mlp")

    # -- shared builders ----------------------------------------------------------------

    def gqa(self, i: int, **extra) -> GQAttention:
        a, p = self.args, f"model.layers.{i}.self_attn"
        return GQAttention(
            q=self.w.linear(f"{p}.q_proj"), k=self.w.linear(f"{p}.k_proj"),
            v=self.w.linear(f"{p}.v_proj"), o=self.w.linear(f"{p}.o_proj"),
            n_heads=a.num_attention_heads, n_kv_heads=a.num_key_value_heads,
            head_dim=a.head_dim, rotary=self.rotary, layer=i, eps=a.rms_norm_eps,
            sliding_window=a.sliding_window, **extra,
        )  # fmt: skip

    def mlp(self, prefix: str) -> GatedMLP:
        w = self.w
        return GatedMLP(
            w.linear(f"{prefix}.gate_proj"), w.linear(f"{prefix}.up_proj"),
            w.linear(f"{prefix}.down_proj"), self.args.hidden_act,
        )  # fmt: skip

    def _make_cache(self, placement: PlacementOptions) -> ExpertCache:
        slow = self.w.slow_tier(
            [self.moe_prefix(i) for i in self.moe_layers], self.expert_names, self.expert_act()
        )
        row_bytes = slow.layout(0)[1]
        total = row_bytes * self.args.n_experts * len(self.moe_layers)
        budget = placement.expert_budget
        if budget is None:
            # all experts, unless they would crowd the fast tier: then what half of it holds
            budget_bytes = min(total, default_fast_tier_bytes(self.device))
        elif budget <= 1:
            budget_bytes = int(round(total * budget))
        else:
            budget_bytes = int(budget)
        hot = hot_set_from_usage(placement.expert_usage) if placement.expert_usage else []
        if placement.policy == "static" and not hot:
            # no recording yet: spread the budget evenly (experts 0.. of every layer)
            hot = [
                (layer, e)
                for e in range(self.args.n_experts)
                for layer in range(len(self.moe_layers))
            ]
        copier = "sync"
        if prefetch_mode(placement.prefetch) != "off":
            copier = placement.prefetch_copier
            copier = default_copier(self.device) if copier == "auto" else copier
        cache = ExpertCache(slow, self.device, budget_bytes, placement.policy, placement.on_miss,
                            hot, n_layers=len(self.moe_layers),
                            copier=make_copier(copier, self.device))  # fmt: skip
        if placement.preload and budget_bytes >= total and placement.policy != "static":
            # like llama.cpp's load: first-token latency should not pay for copies and repacking
            n_layers, n_experts = len(self.moe_layers), self.args.n_experts
            cache.warm(
                [(layer, e) for layer in range(n_layers) for e in range(n_experts)], self.dtype
            )
        return cache

    def _compile_experts(self, wanted: bool | str) -> tuple[FusedExperts | None, float]:
        """The compiled decode kernel, compiled now (at load) on zero rows; (None, 0) where
        it does not apply or compiling failed (then the per-expert kernels run)."""
        if self.cache is None or not compile_wanted(wanted, self.cache.row_bytes):
            return None, 0.0
        slow = self.cache.slow
        fused = FusedExperts.for_scheme(slow.scheme, self.expert_act(), self.device, self.dtype)
        if fused is None:
            return None, 0.0
        started = time.perf_counter()
        k = max(2, self.args.experts_per_token)  # K = 1 is its own graph, compiled on first use
        rows = torch.zeros(k, self.cache.row_bytes, dtype=torch.uint8, device=self.device)
        x = torch.zeros(self.args.hidden_size, dtype=self.dtype, device=self.device)
        # under inference mode, as forward runs it: Dynamo guards on the grad mode, and a
        # kernel compiled outside it was compiled again on the first decoded token, inside
        # the time `itamae bench` measures (0.3-1 s from the disk cache, more when cold)
        with torch.inference_mode():
            ok = fused(x, stacked_views(rows, slow.layout(0)[0]), torch.arange(k)) is not None
        return (fused if ok else None), time.perf_counter() - started

    def _make_prefetch(self, placement: PlacementOptions) -> NextLayerPrefetch | None:
        """Layer i+1's router on layer i's output (prefetch.py), for every plain pre-norm
        layer i+1 routed by its router; None when off or nothing can be predicted (the
        compiled decode step, which runs layers as one graph, is then left out)."""
        if self.cache is None or prefetch_mode(placement.prefetch) == "off":
            return None
        targets = {}
        for i, nxt in enumerate(self.layers[1:]):
            block = getattr(nxt, "ffn", None)
            # (uniform routing, a benchmark setting: a guess would draw from its generator)
            plain = type(nxt) is DecoderLayer and isinstance(block, MoEBlock)
            if plain and block.router.uniform is None:
                targets[i] = nxt
        return NextLayerPrefetch(targets, self.cache) if targets else None

    def _compile_step(self, wanted: bool | str) -> DecodeStep | None:
        """The compiled decode step (compiled_step.py), compiled now; None where it does not
        apply or compiling failed (then decode runs op by op)."""
        if os.environ.get("ITAMAE_COMPILE_STEP", "1").strip().lower() in ("0", "off", "no"):
            return None  # the expert kernel alone (benchmarks compare the two)
        # "auto" compiles the step where it compiles the expert kernel (experts of 1 MiB and
        # more): on the bench model the step with the experts gathered in its graph took
        # 0.82x the CPU time per token of the expert kernel alone (1 thread, one process,
        # interleaved rounds); small models are not worth its compile
        if not compile_wanted(wanted, self.cache.row_bytes if self.cache else 0):
            return None
        if eligible(self) is not None:
            return None
        step = DecodeStep(self)
        seconds = step.warm_up()
        if seconds < 0:
            return None
        self.compile_s += seconds
        return step

    def build_moe(self, i: int) -> MoEBlock:
        shared, gate = self.build_shared(i)
        router = self.build_router(i)
        if self.placement.uniform_routing_seed is not None:
            seed = self.placement.uniform_routing_seed + i
            router.uniform = torch.Generator().manual_seed(seed)
        return MoEBlock(self.moe_layers.index(i), router, self.cache, self.usage, shared, gate,
                        fused=self.fused, overlap=self.overlap)  # fmt: skip

    def _build_layer(self, i: int) -> DecoderLayer:
        p = f"model.layers.{i}"
        ffn = self.build_moe(i) if i in self.moe_layers else self.build_dense_mlp(i)
        return DecoderLayer(
            self.build_attention(i), ffn, self.w.get(f"{p}.input_layernorm.weight"),
            self.w.get(f"{p}.post_attention_layernorm.weight"), self.args.rms_norm_eps,
        )  # fmt: skip

    # -- running ----------------------------------------------------------------------------

    def set_experts_per_token(self, k: int | None) -> None:
        if k is not None and not 1 <= k <= self.args.n_experts:
            from converters.core.errors import ItamaeError

            raise ItamaeError(
                f"experts_per_token must be between 1 and {self.args.n_experts}, not {k}.",
                f"The model's own value is {self.args.experts_per_token}.",
            )
        for layer in self.layers:
            if isinstance(layer.ffn, MoEBlock):
                layer.ffn.experts_per_token = k

    def new_cache(self) -> KVCache:
        return KVCache(self.args.num_hidden_layers, self.args.max_position_embeddings)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, cache: KVCache, all_logits: bool = False, compiled=True
    ) -> torch.Tensor:
        """tokens [B, T] at positions cache.length.. -> logits [B, T, V] (or [B, 1, V]).
        One token after at least two cached ones runs the compiled step where there is one."""
        start = cache.length
        step = getattr(self, "step", None) if compiled else None
        if step is not None and tokens.shape == (1, 1) and start >= 2 and type(cache) is KVCache:
            return step(tokens, cache)
        positions = torch.arange(start, start + tokens.shape[1], device=self.device)
        cos, sin = self.rotary.cos_sin(positions, self.dtype)
        if self.cache is not None:
            self.cache.begin_step()
        x = self.embed[tokens.to(self.device)]
        ahead = self.prefetch if tokens.shape[1] == 1 else None  # decode only
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, start)
            if ahead is not None:
                ahead.after_layer(i, x)
        cache.length = start + tokens.shape[1]
        if not all_logits:
            x = x[:, -1:]
        return self.lm_head(rms_norm(x, self.norm, self.args.rms_norm_eps)).float()
