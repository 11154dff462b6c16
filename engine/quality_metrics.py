"""What quantization cost, position by position: KL divergence, top-1 agreement, NLL, routing.

Definitions follow llama.cpp's `llama-perplexity --kl-divergence` (tools/perplexity):
KL(P_reference || P_model) = sum_v p_ref(v) * (log p_ref(v) - log p_model(v)) at each
position, summarised by its mean and 99th percentile; top-1 agreement is the share of
positions whose most likely next token is the same; perplexity is exp(mean negative
log-likelihood of the text's actual next tokens).

Expert-routing agreement (not in llama.cpp; the MoE-specific figure): for each MoE layer,
the share of routed slots that went to the same experts, |S_model ∩ S_ref| / K averaged
over tokens, where S is the set of K experts a token was sent to. `expert_set_match` is
the stricter share of tokens whose whole set is the same.

Shapes: T = positions, V = vocabulary, K = experts per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class PositionStats:
    """Per-position figures of one window: position t predicts token t+1."""

    kl: np.ndarray  # [T-1] float64
    top1_same: np.ndarray  # [T-1] bool
    nll_model: np.ndarray  # [T-1] float64
    nll_reference: np.ndarray  # [T-1] float64


def compare_logits(model: np.ndarray, reference: np.ndarray, tokens: list[int]) -> PositionStats:
    """model, reference [T, V] logits over the same `tokens` (length T)."""
    if model.shape != reference.shape:
        raise ValueError(f"logits shapes differ: {model.shape} vs {reference.shape}")
    targets = torch.tensor(tokens[1:], dtype=torch.long)
    # float64: KL of near-identical distributions is a small difference of large sums
    log_q = torch.log_softmax(torch.from_numpy(model[:-1]).double(), dim=-1)  # [T-1, V]
    log_p = torch.log_softmax(torch.from_numpy(reference[:-1]).double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)  # rounding can dip below 0
    return PositionStats(
        kl=kl.numpy(),
        top1_same=(log_q.argmax(-1) == log_p.argmax(-1)).numpy(),
        nll_model=-log_q.gather(1, targets[:, None])[:, 0].numpy(),
        nll_reference=-log_p.gather(1, targets[:, None])[:, 0].numpy(),
    )


def routing_overlap(model: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Experts [T, K] chosen by each -> (overlap share [T], same set [T] bool)."""
    if model.shape != reference.shape:
        raise ValueError(f"routing shapes differ: {model.shape} vs {reference.shape}")
    k = model.shape[1]
    same = (model[:, :, None] == reference[:, None, :]).any(-1).sum(-1)  # [T] shared experts
    return same / k, same == k


@dataclass
class Totals:
    """Accumulates windows, then summarises into the report's figures."""

    kl: list[np.ndarray] = field(default_factory=list)
    top1: list[np.ndarray] = field(default_factory=list)
    nll_model: list[np.ndarray] = field(default_factory=list)
    nll_reference: list[np.ndarray] = field(default_factory=list)
    overlap: dict[int, list[np.ndarray]] = field(default_factory=dict)
    set_match: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def add_positions(self, stats: PositionStats) -> None:
        self.kl.append(stats.kl)
        self.top1.append(stats.top1_same)
        self.nll_model.append(stats.nll_model)
        self.nll_reference.append(stats.nll_reference)

    def add_routing(self, layer: int, model: np.ndarray, reference: np.ndarray) -> None:
        overlap, match = routing_overlap(model, reference)
        self.overlap.setdefault(layer, []).append(overlap)
        self.set_match.setdefault(layer, []).append(match)

    def summary(self) -> dict:
        kl = np.concatenate(self.kl)
        nll_m, nll_r = np.concatenate(self.nll_model), np.concatenate(self.nll_reference)
        layers = sorted(self.overlap)
        return {
            "kl_mean": float(kl.mean()),
            "kl_p99": float(np.percentile(kl, 99)),
            "kl_median": float(np.median(kl)),
            "kl_max": float(kl.max()),
            "top1_agreement": float(np.concatenate(self.top1).mean()),
            "ppl_model": float(np.exp(nll_m.mean())),
            "ppl_reference": float(np.exp(nll_r.mean())),
            "scored_positions": int(kl.size),
            "moe_layers": layers,
            "expert_agreement": [float(np.concatenate(self.overlap[i]).mean()) for i in layers],
            "expert_set_match": [float(np.concatenate(self.set_match[i]).mean()) for i in layers],
            "routed_tokens": int(sum(a.size for a in self.overlap[layers[0]])) if layers else 0,
        }
