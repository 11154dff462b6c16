"""Gated DeltaNet linear attention (Qwen3-Next, Qwen3.5): a causal depthwise conv1d over
q|k|v, then the gated delta rule with a per-head recurrent state S [Dk, Dv]:

    S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - k_t^T exp(g_t) S_{t-1}))^T,   o_t = q_t^T S_t

with q and k L2-normalised (q also scaled by Dk^-0.5), beta = sigmoid(b) and the decay
g = -exp(A_log) * softplus(a + dt_bias). The output is RMS-normalised per head and gated by
silu(z). Decode runs that recurrence one token at a time; prefill runs its chunked form
(Yang et al., "Gated Delta Networks", arXiv 2412.06464, §3: within a chunk the updates are
collected by solving a unit lower-triangular system - the WY form - and the state is carried
from chunk to chunk). Both follow the plain-torch references in transformers'
modeling_qwen3_next.py, in float32.

The layer keeps its state in the cache (kv_cache.StateCache): the last K-1 conv inputs and S,
replaced - never written in place - on every call, so a checkpoint of the state is a
reference, not a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import ACTIVATIONS, Linear

CHUNK = 64  # tokens per chunk of the prefill form


def l2_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def delta_rule_step(q, k, v, g, beta, state):
    """One token per head: q, k [B, H, Dk], v [B, H, Dv], g, beta [B, H], state [B, H, Dk, Dv]."""
    state = state * g.exp()[..., None, None]
    remembered = torch.einsum("bhk,bhkv->bhv", k, state)
    delta = (v - remembered) * beta[..., None]
    state = state + k[..., :, None] * delta[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, state), state


def delta_rule_chunked(q, k, v, g, beta, state, chunk: int = CHUNK):
    """q, k [B, H, T, Dk], v [B, H, T, Dv], g, beta [B, H, T] -> ([B, H, T, Dv], state)."""
    t = q.shape[2]
    pad = (-t) % chunk  # zero keys and betas leave the state as it is
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    b, h, n = q.shape[0], q.shape[1], q.shape[2] // chunk
    q, k, v = (x.reshape(b, h, n, chunk, x.shape[-1]) for x in (q, k, v))
    g, beta = g.reshape(b, h, n, chunk), beta.reshape(b, h, n, chunk)
    cum = g.cumsum(-1)  # log decay from the chunk's start
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    # decay[i, j] = exp(cum_i - cum_j) for j <= i, else 0
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    k_beta = k * beta[..., None]
    # (I + strictly lower part of (beta k k^T * decay)) U = beta v, W = beta k exp(cum)
    system = (k_beta @ k.transpose(-1, -2)) * decay
    u = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(
        system, k_beta * cum.exp()[..., None], upper=False, unitriangular=True
    )
    within = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * cum.exp()[..., None]
    k_to_end = k * (cum[..., -1:] - cum).exp()[..., None]
    chunk_decay = cum[..., -1].exp()[..., None, None]
    out = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ state
        out.append(q_decayed[:, :, i] @ state + within[:, :, i] @ v_new)
        state = state * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ v_new
    return torch.cat(out, dim=2)[:, :, :t], state


@dataclass
class GatedDeltaNet:
    """B = batch, T = new tokens, Hk/Hv = key/value heads (Hv a multiple of Hk; value heads
    are grouped by key head), Dk/Dv = head dims, C = conv channels (2 Hk Dk + Hv Dv)."""

    in_qkvz: Linear | None  # Qwen3-Next: one projection, [q, k, v, z] rows per key head
    in_ba: Linear | None  # [b, a] per key head
    conv: torch.Tensor  # [C, 1, K]
    dt_bias: torch.Tensor  # [Hv]
    a_log: torch.Tensor  # [Hv]
    norm: torch.Tensor  # [Dv]
    out: Linear
    k_heads: int
    v_heads: int
    k_dim: int
    v_dim: int
    layer: int
    eps: float = 1e-6
    act: str = "silu"
    # Qwen3.5: separate projections, q|k|v already in conv order
    in_qkv: Linear | None = None
    in_z: Linear | None = None
    in_b: Linear | None = None
    in_a: Linear | None = None

    def _project(self, x):
        b, t, _ = x.shape
        hk, per = self.k_heads, self.v_heads // self.k_heads
        if self.in_qkvz is None:
            z = self.in_z(x).view(b, t, self.v_heads, self.v_dim)
            return self.in_qkv(x), z, self.in_b(x), self.in_a(x)
        qkvz = self.in_qkvz(x).view(b, t, hk, 2 * self.k_dim + 2 * per * self.v_dim)
        q, k, v, z = qkvz.split([self.k_dim, self.k_dim, per * self.v_dim, per * self.v_dim], -1)
        beta, a = self.in_ba(x).view(b, t, hk, 2 * per).split([per, per], -1)
        mixed = torch.cat([q.reshape(b, t, -1), k.reshape(b, t, -1), v.reshape(b, t, -1)], -1)
        z = z.reshape(b, t, self.v_heads, self.v_dim)
        return mixed, z, beta.reshape(b, t, -1), a.reshape(b, t, -1)

    def _convolve(self, mixed, conv_state):
        """Causal depthwise conv over [previous K-1 inputs | new]; returns (out, new state)."""
        seq = torch.cat([conv_state, mixed.transpose(1, 2)], dim=-1)  # [B, C, K-1+T]
        out = F.conv1d(seq, self.conv.to(seq.dtype), groups=seq.shape[1])
        return ACTIVATIONS[self.act](out).transpose(1, 2), seq[..., -(self.conv.shape[-1] - 1) :]

    def __call__(self, x, cos, sin, cache, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        mixed, z, beta, a = self._project(x)
        width = self.conv.shape[-1] - 1
        stored = cache.state(self.layer)
        if stored is None:
            conv_state = mixed.new_zeros(b, mixed.shape[-1], width)
            state = x.new_zeros(b, self.v_heads, self.k_dim, self.v_dim, dtype=torch.float32)
        else:
            conv_state, state = stored
        mixed, conv_state = self._convolve(mixed, conv_state)
        key_dim = self.k_heads * self.k_dim
        q, k, v = mixed.float().split([key_dim, key_dim, self.v_heads * self.v_dim], -1)
        per = self.v_heads // self.k_heads
        q, k = (
            l2_normalise(y.view(b, t, self.k_heads, self.k_dim)).repeat_interleave(per, 2)
            for y in (q, k)
        )
        q = q * self.k_dim**-0.5
        v = v.view(b, t, self.v_heads, self.v_dim)
        g = -self.a_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        beta = beta.float().sigmoid()
        q, k, v, g, beta = (y.transpose(1, 2) for y in (q, k, v, g, beta))  # heads first
        if t == 1:
            o, state = delta_rule_step(
                q[:, :, 0], k[:, :, 0], v[:, :, 0], g[..., 0], beta[..., 0], state
            )
            o = o[:, :, None]
        else:
            o, state = delta_rule_chunked(q, k, v, g, beta, state)
        cache.set_state(self.layer, conv_state, state)
        o = o.transpose(1, 2)  # [B, T, Hv, Dv]
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)
        o = self.norm.float() * o * F.silu(z.float())
        return self.out(o.to(x.dtype).reshape(b, t, -1))
