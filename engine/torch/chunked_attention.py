"""Llama 4's attention (iRoPE): chunked local attention on the RoPE layers, global
attention without positions (NoPE) on the others.

- RoPE layers rotate q and k (adjacent pairs of dims, Llama 4's complex form), then, where
  the config says `use_qk_norm`, L2-normalise each head's q and k (an RMSNorm without a
  weight), and attend only within their chunk: query i sees key j when j <= i and both lie
  in the same block of `attention_chunk_size` positions.
- NoPE layers attend over the whole prefix; with `attn_temperature_tuning` their queries
  are scaled by log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1, which is 1 until
  position floor_scale - 1 (Scout: 8192) and grows slowly after it.

References: transformers' modeling_llama4.py (`Llama4TextAttention`, `Llama4TextL2Norm`)
and masking_utils.py (`chunked_overlay`); llama.cpp's src/models/llama4.cpp (which fixes
the chunk and the temperature floor at 8192).
The cache keeps every position of every layer; a decode step of a chunked layer reads only
its chunk's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import causal_mask, decode_attention
from .kv_cache import KVCache
from .layers import Linear
from .rope import Rotary


def chunked_causal_mask(q_len: int, start: int, chunk: int, device) -> torch.Tensor:
    """bool [q_len, start+q_len]: causal, and key and query in the same chunk."""
    rows = torch.arange(start, start + q_len, device=device)[:, None]
    cols = torch.arange(start + q_len, device=device)[None, :]
    return (cols <= rows) & (cols // chunk == rows // chunk)


def temperature_scales(positions: torch.Tensor, floor_scale: float, strength: float):
    """[T] float32 query scales of a NoPE layer at absolute `positions`."""
    return torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * strength + 1.0


def l2_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass
class ChunkedAttention:
    """B = batch, T = new tokens, S = cached + new, Hq/Hkv = heads, D = head dim."""

    q: Linear
    k: Linear
    v: Linear
    o: Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rotary: Rotary | None  # None: a NoPE layer
    layer: int
    eps: float = 1e-5
    chunk_size: int | None = None  # None: attends over the whole prefix
    qk_l2_norm: bool = False
    temperature: tuple[float, float] | None = None  # (floor_scale, attn_scale)

    def __call__(self, x, cos, sin, cache: KVCache, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, T, D]
        k = self.k(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary.apply(q, cos, sin), self.rotary.apply(k, cos, sin)
        if self.qk_l2_norm:
            q, k = l2_norm(q, self.eps), l2_norm(k, self.eps)
        if self.temperature is not None:
            positions = torch.arange(start, start + t, device=x.device)
            scales = temperature_scales(positions, *self.temperature)  # [T]
            q = (q * scales.view(1, 1, t, 1)).to(q.dtype)
        k, v = cache.update(self.layer, start, 2, k, v)  # [B, Hkv, S, D]
        if t == 1:
            if self.chunk_size is not None:  # only the current chunk's keys
                first = start // self.chunk_size * self.chunk_size
                k, v = k[:, :, first:], v[:, :, first:]
            out = decode_attention(q, k, v)
        else:
            if self.chunk_size is not None:
                mask = chunked_causal_mask(t, start, self.chunk_size, x.device)
            else:
                mask = causal_mask(t, start, None, x.device)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads
            )
        return self.o(out.transpose(1, 2).reshape(b, t, -1))
