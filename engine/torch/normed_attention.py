"""Attention over RMS-normalised queries, keys and values with scale 1 (Gemma 4,
transformers' Gemma4TextAttention): q and k normalised per head with a learned scale, v
without one, RoPE on q and k; optionally K = V (no value projection: the key projection's
output, before k's norm and RoPE, is also the value), a sliding window whose keys live in
kv_cache.WindowedKVCache, and keys and values shared with later layers (`SharedKV`: a
producing layer leaves them there in each forward pass, the sharing layers compute none).
Norms compute as transformers' Gemma4RMSNorm: float32, times w in float32, then cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import decode_attention
from .kv_cache import WindowedKVCache
from .layers import Linear
from .rope import Rotary


def normed(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x * (mean(x^2) + eps)^-0.5 in float32, times w (None: no scale)."""
    h = x.float()
    h = h * torch.pow(h.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        h = h * weight.float()
    return h.to(x.dtype)


class SharedKV:
    """The keys and values a producing layer made in this forward pass, for the shared
    layers after it: (first position, k, v)."""

    kv: tuple[int, torch.Tensor, torch.Tensor] | None = None


def attend(q, k, v, start: int, seen: int, window: int | None) -> torch.Tensor:
    """q [B, Hq, T, D] at positions start.., k and v [B, Hkv, S, D] at positions seen..;
    scale 1 (q and k are normalised). One query sees only keys inside its window already."""
    t, s = q.shape[2], k.shape[2]
    if t == 1:
        return decode_attention(q, k, v, scale=1.0)
    rows = torch.arange(start, start + t, device=q.device)[:, None]
    cols = torch.arange(seen, seen + s, device=q.device)[None, :]
    allowed = cols <= rows
    if window is not None:
        allowed &= cols > rows - window
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, scale=1.0, enable_gqa=q.shape[1] != k.shape[1]
    )


@dataclass
class NormedAttention:
    """B = batch, T = new tokens, S = keys seen, Hq/Hkv = heads, D = head dim."""

    q: Linear
    o: Linear
    q_norm: torch.Tensor
    k: Linear | None  # None: a shared-KV layer
    v: Linear | None  # None: K = V (or shared)
    k_norm: torch.Tensor | None
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rotary: Rotary
    layer: int
    eps: float
    window: int | None  # sliding layers
    shared: SharedKV | None = None  # written by a producer, read by a shared layer
    reuse: bool = False

    def __call__(self, x, cos, sin, cache: WindowedKVCache, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = normed(self.q(x).view(b, t, self.n_heads, self.head_dim), self.q_norm, self.eps)
        q = self.rotary.apply(q.transpose(1, 2), cos, sin)
        if self.reuse:
            seen, k, v = self.shared.kv
        else:
            seen, k, v = self._keys_values(x, cos, sin, cache, start)
            if self.shared is not None:
                self.shared.kv = (seen, k, v)
        out = attend(q, k, v, start, seen, self.window)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))

    def _keys_values(self, x, cos, sin, cache: WindowedKVCache, start: int):
        b, t, _ = x.shape
        k = self.k(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = k if self.v is None else self.v(x).view(b, t, self.n_kv_heads, self.head_dim)
        k = self.rotary.apply(normed(k, self.k_norm, self.eps).transpose(1, 2), cos, sin)
        v = normed(v, None, self.eps).transpose(1, 2)
        if self.window is not None:
            seen, (k, v) = cache.update_window(self.layer, start, k, v)
            return seen, k, v
        k, v = cache.update(self.layer, start, 2, k, v)  # [B, Hkv, S, D]
        return 0, k, v
