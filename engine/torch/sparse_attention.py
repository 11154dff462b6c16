"""DeepSeek Sparse Attention's lightning indexer: per query, the `top_k` past positions the
attention may read (DeepSeek-V3.2-Exp report, §2.1).

Its own small projections score every cached position for each query,
    I[t, s] = sum_h w[t, h] * relu(q[t, h] . k[s] / sqrt(D)),  w = weights_proj(x) / sqrt(H)
with q from the attention's q LoRA latent (wq_b), one shared key per position
(LayerNorm(wk(x))), RoPE on the first rope_dim dims in the half-split layout (unlike MLA's
interleaved pairs). Its keys live in the KV cache beside MLA's latent, so a later turn
scores against the same keys. The Hadamard rotation and FP8 scoring of DeepSeek's kernel
leave dot products unchanged and are not needed for exactness.

References: transformers' modeling_deepseek_v32.py (`DeepseekV32Indexer`); llama.cpp's
src/models/deepseek32.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import Linear
from .rope import Rotary


@dataclass
class LightningIndexer:
    """B = batch, T = new tokens, S = cached + new, H = indexer heads, D = indexer head dim."""

    wq_b: Linear  # q_lora_rank -> H * D
    wk: Linear  # hidden -> D
    k_norm: torch.Tensor  # LayerNorm weight [D]
    k_norm_bias: torch.Tensor  # LayerNorm bias [D]
    weights_proj: torch.Tensor  # [H, hidden], float32 (DeepSeek keeps it in fp32)
    n_heads: int
    head_dim: int
    top_k: int
    rotary: Rotary  # half-split layout over the first rope_dim dims

    def keys(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """The new positions' indexer keys [B, T, D], for the cache."""
        k = F.layer_norm(self.wk(x), (self.head_dim,), self.k_norm, self.k_norm_bias, 1e-6)
        cos, sin = self._cos_sin(x, start)
        return self.rotary.apply(k[:, None], cos, sin)[:, 0]

    def select(
        self, x: torch.Tensor, q_latent: torch.Tensor, keys: torch.Tensor, start: int
    ) -> torch.Tensor | None:
        """Indices [B, T, top_k] of the positions each new query attends to, or None when
        the cache holds no more than top_k positions (then every causal position is kept)."""
        b, t, _ = x.shape
        s = keys.shape[1]
        if s <= self.top_k:
            return None
        q = self.wq_b(q_latent).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        cos, sin = self._cos_sin(x, start)
        q = self.rotary.apply(q, cos, sin).transpose(1, 2)  # [B, T, H, D]
        # the order of transformers' reference: scale, relu, then the weighted head sum
        scores = torch.matmul(q.float(), keys.float().transpose(-1, -2)[:, None]) * (
            self.head_dim**-0.5
        )  # [B, T, H, S]
        weights = (x.float() @ self.weights_proj.t()) * self.n_heads**-0.5  # [B, T, H]
        index = torch.matmul(weights[:, :, None], F.relu(scores))[:, :, 0]  # [B, T, S]
        if t > 1:
            rows = torch.arange(start, start + t, device=x.device)[:, None]
            future = torch.arange(s, device=x.device)[None, :] > rows
            index = index.masked_fill(future, float("-inf"))
        return index.topk(self.top_k, dim=-1).indices

    def _cos_sin(self, x: torch.Tensor, start: int):
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        return self.rotary.cos_sin(positions, x.dtype)


def chosen_mask(chosen: torch.Tensor, causal: torch.Tensor | None, s: int) -> torch.Tensor:
    """bool [B, 1, T, S]: True where a query may attend (chosen by the indexer and causal)."""
    b, t, _ = chosen.shape
    mask = torch.zeros(b, t, s, dtype=torch.bool, device=chosen.device)
    mask.scatter_(-1, chosen, True)
    if causal is not None:
        mask &= causal
    return mask[:, None]
