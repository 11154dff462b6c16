"""DeepSeek-V4's KV compressors and the lightning indexer of its compressed sparse attention.

A compressor turns every `ratio` consecutive tokens (a window) into one compressed KV entry:
per token a value C = x W_kv and a gate Z = x W_gate + B (B: a learned bias per position in
the window, `ape`), entry = RMSNorm(sum over the window of softmax(Z) * C), rotated at the
window's first position (paper §2.3, eqs. 9-12 and 20-23).
- Heavily compressed attention (HCA, ratio 128): disjoint windows.
- Compressed sparse attention (CSA, ratio 4): overlapping windows of 2 x ratio tokens; each
  token projects two series, Ca (its share of the next window's entry) and Cb (of its own
  window's), so an entry mixes the previous window's Ca with its own window's Cb.
  A lightning indexer (its own compressor at `index_head_dim`, queries from the attention's
  q LoRA latent) scores each query against the compressed entries,
      I[t, s] = sum_h w[t, h] * relu(q[t, h] . k[s]) / sqrt(D_i),  w = x W_w / sqrt(H_i),
  and the query attends only to its `index_topk` best entries.
A query at position p sees entry w only once its window is complete: w < (p + 1) // ratio.

What a compressor keeps between calls (`CompressorState`): the entries made so far, the
projections of tokens since the last complete window, and for CSA that window's Ca. The
state is replaced, never written into, so the cache's turn checkpoints hold references.

B = batch, T = new tokens, W = complete windows, N = entries, D = the compressor's head dim.
References: DeepSeek-V4 paper §2.3; transformers' modeling_deepseek_v4.py
(`DeepseekV4HCACompressor`, `DeepseekV4CSACompressor`, `DeepseekV4Indexer`, their caches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import Linear, rms_norm
from .rope import Rotary


def rotate_tail(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the last 2 * cos.shape[-1] dims of x [..., T, D] in interleaved pairs
    (2i, 2i+1), the pairs kept in place: V4's values are its keys, so the rotated dims
    reach the output and their order matters. cos, sin: [T, R/2] float32."""
    r = cos.shape[-1] * 2
    cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    nope, rope = x[..., :-r], x[..., -r:]
    turned = torch.stack((-rope[..., 1::2], rope[..., 0::2]), dim=-1).flatten(-2)
    rotated = (rope.float() * cos + turned.float() * sin).to(x.dtype)
    return torch.cat([nope, rotated], dim=-1)


def rope_at(rotary: Rotary, positions: torch.Tensor):
    return rotary.cos_sin(positions, torch.float32)


@dataclass(frozen=True)
class CompressorState:
    entries: torch.Tensor  # [B, N, D]
    pending_kv: torch.Tensor  # [B, P < ratio, C * D]: tokens since the last full window
    pending_gate: torch.Tensor  # [B, P, C * D], `ape` not yet added
    previous_kv: torch.Tensor | None = None  # CSA: [B, ratio, D], Ca of the last window
    previous_gate: torch.Tensor | None = None  # its gates, `ape` added

    def tensors(self) -> list[torch.Tensor]:
        parts = (self.entries, self.pending_kv, self.pending_gate)
        return [*parts, *(t for t in (self.previous_kv, self.previous_gate) if t is not None)]


@dataclass
class Compressor:
    wkv: Linear  # hidden -> C * D (C = 2 with overlap)
    wgate: Linear  # hidden -> C * D
    ape: torch.Tensor  # [ratio, C * D] float32
    norm: torch.Tensor  # [D] RMSNorm weight
    ratio: int
    head_dim: int
    overlap: bool  # CSA's two series
    rotary: Rotary  # the compressed branch's RoPE (compress_rope_theta, YaRN)
    eps: float

    def empty(self, x: torch.Tensor) -> CompressorState:
        width = self.wkv.out_features
        b = x.shape[0]
        return CompressorState(
            x.new_zeros(b, 0, self.head_dim), x.new_zeros(b, 0, width), x.new_zeros(b, 0, width)
        )

    def __call__(self, x: torch.Tensor, state: CompressorState) -> CompressorState:
        """x [B, T, hidden] (the normed block input) -> the state with the new entries."""
        kv = torch.cat([state.pending_kv, self.wkv(x)], dim=1)
        gate = torch.cat([state.pending_gate, self.wgate(x)], dim=1)
        usable = kv.shape[1] // self.ratio * self.ratio
        pending = dict(pending_kv=kv[:, usable:], pending_gate=gate[:, usable:])
        if usable == 0:
            return CompressorState(
                state.entries,
                previous_kv=state.previous_kv,
                previous_gate=state.previous_gate,
                **pending,
            )
        b, n_windows, first = x.shape[0], usable // self.ratio, state.entries.shape[1] * self.ratio
        chunk_kv = kv[:, :usable].view(b, n_windows, self.ratio, -1)
        chunk_gate = gate[:, :usable].view(b, n_windows, self.ratio, -1) + self.ape
        previous = (state.previous_kv, state.previous_gate)
        if self.overlap:
            chunk_kv, chunk_gate, previous = self._overlapping(chunk_kv, chunk_gate, previous)
        weights = chunk_gate.softmax(dim=2, dtype=torch.float32).to(chunk_kv.dtype)
        compressed = rms_norm((chunk_kv * weights).sum(dim=2), self.norm, self.eps)  # [B, W, D]
        positions = torch.arange(n_windows, device=x.device) * self.ratio + first
        compressed = rotate_tail(compressed, *rope_at(self.rotary, positions))
        entries = torch.cat([state.entries, compressed], dim=1)
        return CompressorState(
            entries, previous_kv=previous[0], previous_gate=previous[1], **pending
        )

    def _overlapping(self, chunk_kv, chunk_gate, previous):
        """[B, W, ratio, 2D] -> [B, W, 2 ratio, D]: window w's slots are window w-1's Ca then
        its own Cb; the first window takes the previous call's Ca (none at the start: zero
        values, -inf gates, weight 0). Returns the last window's Ca for the next call."""
        b, w, r, d = *chunk_kv.shape[:3], self.head_dim
        kv = chunk_kv.new_zeros(b, w, 2 * r, d)
        gate = chunk_gate.new_full((b, w, 2 * r, d), float("-inf"))
        kv[:, :, r:], gate[:, :, r:] = chunk_kv[..., d:], chunk_gate[..., d:]
        kv[:, 1:, :r], gate[:, 1:, :r] = chunk_kv[:, :-1, :, :d], chunk_gate[:, :-1, :, :d]
        if previous[0] is not None:
            kv[:, 0, :r], gate[:, 0, :r] = previous[0], previous[1]
        return kv, gate, (chunk_kv[:, -1, :, :d], chunk_gate[:, -1, :, :d])


def visible_entries(positions: torch.Tensor, n_entries: int, ratio: int) -> torch.Tensor:
    """bool [T, N]: entry w is complete for the query at position p (w < (p + 1) // ratio)."""
    ready = (positions + 1) // ratio
    return torch.arange(n_entries, device=positions.device)[None, :] < ready[:, None]


@dataclass
class Indexer:
    """CSA's lightning indexer. H = indexer heads, Di = indexer head dim."""

    compressor: Compressor  # overlapping, at Di
    wq_b: Linear  # q_lora_rank -> H * Di
    weights_proj: Linear  # hidden -> H
    n_heads: int
    head_dim: int
    top_k: int

    def select(self, x, q_latent, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """bool [B, T, N]: the entries each query attends to, of keys [B, N, Di]."""
        b, t, _ = x.shape
        n = keys.shape[1]
        visible = visible_entries(positions, n, self.compressor.ratio)  # [T, N]
        if n == 0:
            return visible.expand(b, t, n)
        q = self.wq_b(q_latent).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        q = rotate_tail(q, *rope_at(self.compressor.rotary, positions)).transpose(1, 2)
        # transformers' order: product, relu, scale, then the weighted head sum
        scores = torch.matmul(q.float(), keys.transpose(-1, -2).float().unsqueeze(1))  # [B,T,H,N]
        scores = F.relu(scores) * self.head_dim**-0.5
        weights = self.weights_proj(x).float() * self.n_heads**-0.5  # [B, T, H]
        index = (scores * weights.unsqueeze(-1)).sum(dim=2)  # [B, T, N]
        index = index.masked_fill(~visible, float("-inf"))
        # best first, ties by position: a stable sort, not topk, whose order among equal
        # scores (relu makes exact zeros) depends on the row's length, so a prompt run in
        # chunks would choose otherwise than the same prompt run at once
        chosen = index.sort(dim=-1, descending=True, stable=True).indices[..., : self.top_k]
        mask = torch.zeros(b, t, n, dtype=torch.bool, device=x.device)
        mask.scatter_(-1, chosen, True)
        return mask & visible  # a query with fewer than top_k complete windows sees those
