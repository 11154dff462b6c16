"""Manifold-constrained hyper-connections (mHC): DeepSeek-V4's residual of `hc_mult` streams.

Each token carries N = hc_mult copies of the hidden state. Before a block (attention or
MoE) a small projection of all N streams gives three mixings: `pre` collapses the streams
into the block's input, `post` spreads the block's output back over the streams, `comb`
(an N x N matrix made doubly stochastic by Sinkhorn-Knopp iterations) mixes the input
streams into the output ones:

    streams' = post * block(sum_j pre_j stream_j) + comb^T @ streams

The final `hc_head` collapses the streams once more (its own `pre`) before the last norm.
The mixers run in float32 whatever the compute dtype, as DeepSeek keeps them.

B = batch, T = tokens, N = streams, D = hidden size.
References: Xie et al. 2026 (mHC); DeepSeek-V4 paper §2.2; transformers'
modeling_deepseek_v4.py (`DeepseekV4HyperConnection`, `DeepseekV4HyperHead`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def unweighted_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


@dataclass
class HyperConnection:
    fn: torch.Tensor  # [(2 + N) * N, N * D] float32: pre, post and comb logits
    base: torch.Tensor  # [(2 + N) * N] float32
    scale: torch.Tensor  # [3] float32: pre, post, comb gains
    n_streams: int
    sinkhorn_iters: int
    eps: float  # hc_eps: the mixings' floor and the Sinkhorn denominators'
    norm_eps: float  # rms_norm_eps of the streams' norm

    def __call__(self, streams: torch.Tensor):
        """streams [B, T, N, D] -> (post [B, T, N], comb [B, T, N, N], block input [B, T, D])."""
        b, t, n = streams.shape[0], streams.shape[1], self.n_streams
        flat = unweighted_rms_norm(streams.reshape(b, t, -1).float(), self.norm_eps)
        pre_w, post_w, comb_w = F.linear(flat, self.fn).split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.split([n, n, n * n])
        pre_s, post_s, comb_s = self.scale.unbind(0)
        pre = torch.sigmoid(pre_w * pre_s + pre_b) + self.eps
        post = 2 * torch.sigmoid(post_w * post_s + post_b)
        comb = comb_w.view(b, t, n, n) * comb_s + comb_b.view(n, n)
        comb = torch.softmax(comb, dim=-1) + self.eps
        comb = comb / (comb.sum(dim=-2, keepdim=True) + self.eps)
        for _ in range(self.sinkhorn_iters - 1):  # rows, then columns, sum to one
            comb = comb / (comb.sum(dim=-1, keepdim=True) + self.eps)
            comb = comb / (comb.sum(dim=-2, keepdim=True) + self.eps)
        collapsed = (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)
        return post, comb, collapsed

    @staticmethod
    def merge(streams, block_out, post, comb) -> torch.Tensor:
        """The streams after a block: post-weighted output plus the comb-mixed input (comb is
        applied transposed: out_k = sum_j comb[j, k] stream_j, and it is not symmetric)."""
        dtype = streams.dtype
        spread = post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2)
        return spread + torch.matmul(comb.to(dtype).transpose(-1, -2), streams)


@dataclass
class HyperHead:
    fn: torch.Tensor  # [N, N * D] float32
    base: torch.Tensor  # [N]
    scale: torch.Tensor  # [1]
    eps: float
    norm_eps: float

    def __call__(self, streams: torch.Tensor) -> torch.Tensor:
        """streams [B, T, N, D] -> [B, T, D]."""
        flat = unweighted_rms_norm(streams.flatten(2).float(), self.norm_eps)
        pre = torch.sigmoid(F.linear(flat, self.fn) * self.scale + self.base) + self.eps
        return (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)
