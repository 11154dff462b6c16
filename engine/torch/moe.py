"""The MoE block: exact per-architecture routing, then expert-sparse compute.

Routing references (transformers 5 modeling files, and the models' own code):
- Mixtral: softmax over all experts, top-k, always renormalised (MixtralTopKRouter).
- Qwen2-MoE / Qwen3-MoE / OLMoE: softmax, top-k, renormalised only if `norm_topk_prob`;
  Qwen2-MoE adds a shared expert scaled by sigmoid(shared_expert_gate(x)).
- DeepSeek-V2: softmax, "greedy" or "group_limited_greedy" (groups ranked by their best
  expert), weights x routed_scaling_factor (or renormalised when norm_topk_prob, as
  DeepSeek's own modeling_deepseek.py does), plus shared experts.
- gpt-oss: logits with a bias, top-k, softmax over the chosen k (= renormalised softmax).
- Llama 4: sigmoid of the top-k logits; the weight scales the expert's input, not its
  output (Llama4TextMoe: `routed_in = hidden_states * router_scores`), with a shared expert.
- DeepSeek-V3/R1: sigmoid scores; choice uses scores + e_score_correction_bias with groups
  ranked by the sum of their two best; weights are the unbiased scores, renormalised if
  `norm_topk_prob`, then x routed_scaling_factor (DeepseekV3TopkRouter).
- DeepSeek-V4: V3's choice and weights over sqrt(softplus(logits)) scores, no groups
  (DeepseekV4TopKRouter); its hash layers take the experts from a token -> experts table
  and only the weights from the router (models/deepseek_v4.py, `MoEBlock.mix`).
Compute (gpt-fast's MoE, made sparse): tokens are sorted by expert, each selected expert
runs once on its group, results are scattered back weighted. Never a loop over all experts.
Decode (one token) runs the K chosen experts through one compiled kernel where there is one
(compiled.py), gathering them from the expert cache's slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .compiled import FusedExperts, weighted_sum
from .layers import GatedMLP, Linear
from .overlap import TierOverlap
from .placement import ExpertCache


@dataclass
class Router:
    weight: torch.Tensor  # [E, H] float32
    top_k: int
    bias: torch.Tensor | None = None  # [E] float32 (gpt-oss's router has one)
    scoring: str = "softmax"  # softmax | sigmoid | sqrtsoftplus
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    group_score: str | None = None  # None | "max" (DeepSeek-V2) | "top2_sum" (DeepSeek-V3)
    correction_bias: torch.Tensor | None = None
    deepseek_v2_norm: bool = False  # V2: renormalise instead of scaling
    # measurement only: experts drawn uniformly at random (weights 1/k) instead of routed, to
    # benchmark expert placement under uniform routing; None in normal use
    uniform: torch.Generator | None = None

    def __call__(self, x: torch.Tensor, top_k: int | None = None):
        """x [T, H] -> (weights [T, k] float32, experts [T, k] int64)."""
        k = top_k or self.top_k
        if self.uniform is not None:
            return self._uniform(x.shape[0], k, x.device)
        return route(x, k, self.weight, self.bias, self.correction_bias, self.config())

    def config(self) -> tuple:
        """The routing's constants, in `route`'s order (a compiled graph keys on them)."""
        return (self.scoring, self.norm_topk_prob, self.routed_scaling_factor, self.n_group,
                self.topk_group, self.group_score, self.deepseek_v2_norm)  # fmt: skip

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> [T, E] float32 expert scores."""
        return expert_scores(F.linear(x.float(), self.weight, self.bias), self.scoring)

    def _uniform(self, n_tokens: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.weight.shape[0]
        experts = torch.rand(n_tokens, e, generator=self.uniform).argsort(dim=-1)[:, :k]
        return torch.full((n_tokens, k), 1.0 / k, device=device), experts.to(device)


def route(x, k: int, weight, bias, correction_bias, config: tuple):
    """Router.__call__ as a function of tensors and constants (compiled_step.py traces it)."""
    scoring, norm_topk_prob, scaling, n_group, topk_group, group_score, v2_norm = config
    scores = expert_scores(F.linear(x.float(), weight, bias), scoring)  # [T, E]
    choice = scores if correction_bias is None else scores + correction_bias
    if group_score is not None:
        choice = _limit_groups(choice, n_group, topk_group, group_score)
    if group_score is None and correction_bias is None:
        weights, experts = torch.topk(scores, k, dim=-1)
    else:
        experts = torch.topk(choice, k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, experts)
    if v2_norm:
        if norm_topk_prob and k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        else:
            weights = weights * scaling
        return weights, experts
    if norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + (1e-20 if scoring != "softmax" else 0))
    return weights * scaling, experts


def expert_scores(logits: torch.Tensor, scoring: str) -> torch.Tensor:
    if scoring == "sigmoid":
        return logits.sigmoid()
    if scoring == "sqrtsoftplus":  # DeepSeek-V4
        return F.softplus(logits).sqrt()
    return logits.softmax(dim=-1)


def _limit_groups(choice: torch.Tensor, n_group: int, topk_group: int, group_score: str):
    t, e = choice.shape
    grouped = choice.view(t, n_group, e // n_group)
    if group_score == "max":
        group_scores = grouped.max(dim=-1).values
    else:
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    keep = torch.topk(group_scores, topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
    mask = mask[:, :, None].expand(t, n_group, e // n_group).reshape(t, e)
    # V2 zeroes the other groups' softmax scores, V3 sets them to -inf: same choice
    fill = 0.0 if group_score == "max" else float("-inf")
    return choice.masked_fill(~mask, fill)


class ExpertUsage:
    """expert_counts[moe_layer][expert]: tokens each routed expert worked on.

    Kept in numpy: updating a few counters per decode step must not start torch's thread
    pool (on a busy machine that costs milliseconds per call).
    """

    def __init__(self, n_layers: int, n_experts: int):
        self.array = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.trace: list[tuple[int, list[int]]] | None = None  # (layer, experts) per call if on

    @property
    def counts(self) -> torch.Tensor:
        return torch.from_numpy(self.array.copy())

    def record(self, layer: int, experts: list[int], tokens: list[int]) -> None:
        """`experts` distinct and ascending, `tokens[i]` routed to experts[i]."""
        self.array[layer, experts] += tokens
        if self.trace is not None:
            self.trace.append((layer, experts))

    def record_token(self, layers: list[int], experts: np.ndarray) -> None:
        """One token through `layers`, row i of `experts` [len(layers), K] (distinct within a
        row) the ones layers[i] chose: as `record` per layer, in one update (the compiled
        decode step, whose 12 calls a token took about 50 us on the bench model)."""
        self.array[np.asarray(layers)[:, None], experts] += 1
        if self.trace is not None:
            rows = experts.tolist()
            self.trace.extend((layer, sorted(row)) for layer, row in zip(layers, rows, strict=True))


@dataclass
class MoEBlock:
    """T = tokens, H = hidden, E = experts, K = experts per token."""

    layer: int  # index among MoE layers (0-based), the cache and the counts key on it
    router: Router
    cache: ExpertCache
    usage: ExpertUsage
    shared: GatedMLP | None = None
    shared_gate: Linear | None = None  # Qwen2-MoE
    experts_per_token: int | None = None  # run-time override
    fused: FusedExperts | None = None  # decode's compiled kernel (compiled.py), None: plain
    weight_input: bool = False  # Llama 4: the routing weight scales the expert's input
    overlap: TierOverlap | None = None  # both tiers at once (overlap.py), None: in turn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [T, H]
        return self.mix(x, *self.router(flat, self.experts_per_token))

    def mix(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """The routed experts' weighted sum (plus shared experts) for a routing already made
        ([T, K] weights and experts; DeepSeek-V4's hash layers route by token id)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [T, H]
        if flat.shape[0] == 1:
            out = self._one_token(flat, weights[0], experts[0])
        else:
            out = self._grouped(flat, weights, experts)
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(flat)) * shared
            out = out + shared
        return out.view(shape)

    def _one_token(self, flat, weights, experts) -> torch.Tensor:
        """Decode: K experts on one token, summed in expert order as the grouped path does."""
        pairs = sorted(zip(experts.tolist(), weights.tolist(), strict=True))
        chosen = [e for e, _ in pairs]
        self.usage.record(self.layer, chosen, [1] * len(pairs))
        if self.weight_input:  # expert(w * x): the compiled kernel weights outputs instead
            return sum(self.cache.run(self.layer, e, flat * w) for e, w in pairs).to(flat.dtype)
        if self.fused is not None:
            return self._fused(flat, chosen, [w for _, w in pairs])
        if self.overlap is not None:
            return self.overlap.mix(self.cache, self.layer, flat, pairs)
        out = None
        for expert, weight in pairs:
            y = self.cache.run(self.layer, expert, flat) * weight  # [1, H]
            out = y if out is None else out + y
        return out.to(flat.dtype)

    def _fused(self, flat, experts: list[int], weights: list[float]) -> torch.Tensor:
        """The compiled kernel over the chosen experts: slots of the fast tier by slot index,
        the rest where they live by expert index. Each expert's row of outputs is the same
        bits either way, and the weighted sum runs over them in expert order whatever their
        tier, so the budget does not change the result."""
        slots: list[int | None] = []
        done: list[tuple[list[int], torch.Tensor]] = []  # (positions, their outputs)
        open_batch: list[int] = []  # positions whose slot holds their expert, not yet run
        for e in experts:
            victim = self.cache.would_evict(self.layer, e)
            if victim is not None and any(slots[i] == victim for i in open_batch):
                done.append((open_batch, self._batch(flat, experts, slots, open_batch)))
                open_batch = []  # run before a later miss reuses one of their slots
            slots.append(self.cache.locate(self.layer, e, 1))
            if slots[-1] is not None:
                open_batch.append(len(slots) - 1)
        for positions in (open_batch, [i for i, s in enumerate(slots) if s is None]):
            if positions:
                done.append((positions, self._batch(flat, experts, slots, positions)))
        if len(done) == 1:  # the usual case: every expert from one tier, in expert order
            y = done[0][1]
        else:
            y = torch.empty(len(experts), flat.shape[-1], device=flat.device)  # [K, H]
            for positions, out in done:
                y[positions] = out.to(y.device)
        w = torch.tensor(weights, dtype=torch.float32, device=y.device)
        return weighted_sum(w, y).to(flat.dtype)  # [1, H], as the compiled step sums them

    def _batch(self, flat, experts, slots, positions: list[int]) -> torch.Tensor:
        """[len(positions), H] float32 outputs of those experts, all in one tier."""
        if slots[positions[0]] is not None:
            views = self.cache.fast_views(self.layer)
            idx = torch.tensor([slots[i] for i in positions])
        else:
            views, idx = self.cache.slow.stacked(self.layer, [experts[i] for i in positions])
        out = self.fused(flat.to(idx.device), views, idx)
        if out is None:  # the compiled kernel failed: the plain path (uses already counted)
            out = torch.cat([self._plain(experts[i], slots[i], flat) for i in positions])
        return out

    def _plain(self, expert: int, slot: int | None, flat) -> torch.Tensor:
        if slot is not None:
            return self.cache.ffn(slot, self.layer)(flat).float()
        ffn = self.cache.slow.ffn(self.layer, self.cache.slow.row(self.layer, expert))
        return ffn(flat.to(ffn.row.device)).float().to(flat.device)

    def _grouped(self, flat, weights, experts) -> torch.Tensor:
        """Prefill: tokens sorted by expert, each active expert runs once on its group."""
        k = experts.shape[1]
        order = torch.argsort(experts.flatten(), stable=True)  # routed slots sorted by expert
        per_expert = torch.bincount(experts.flatten(), minlength=self.usage.array.shape[1])
        active = per_expert.nonzero().flatten().tolist()
        counts = per_expert[active].tolist()
        self.usage.record(self.layer, active, counts)
        out = torch.zeros_like(flat)
        flat_weights = weights.flatten()
        start = 0
        for expert, count in zip(active, counts, strict=True):
            slots = order[start : start + count]
            start += count
            tokens = slots // k
            w = flat_weights[slots, None]
            if self.weight_input:
                y = self.cache.run(self.layer, expert, flat[tokens] * w.to(flat.dtype))
                out.index_add_(0, tokens, y.to(out.dtype))
                continue
            y = self.cache.run(self.layer, expert, flat[tokens])  # [count, H]
            out.index_add_(0, tokens, (y * w.to(y.dtype)).to(out.dtype))
        return out
