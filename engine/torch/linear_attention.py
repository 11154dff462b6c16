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

The layer keeps its state in the cache (kv_cache.StateCache): the last K-1 conv inputs and S.
Prefill replaces them; decode updates them in place (the conv window shifted, S decayed and
given its rank-1 update by in-place ops, the input projections one fused matvec), because a
decode step is a few small ops per layer and each allocation or extra call is a visible
part of it. The cache copies the state when it keeps a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import ACTIVATIONS, Linear, causal_conv, fuse_rows

CHUNK = 64  # tokens per chunk of the prefill form


def l2_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def delta_rule_step_(q, k, v, g, beta, state):
    """One token per head, updating `state` in place: q, k [B, H, Dk], v [B, H, Dv], g, beta
    [B, H], state [B, H, Dk, Dv] contiguous -> o [B, H, Dv].

    Three passes over S, no S-sized temporary: k and q read the old state in one batched
    matmul, since with d = exp(g) and delta = beta (v - d k^T S)
        q^T S_t = q^T (d S + k delta^T) = d q^T S + (q . k) delta,
    then S is decayed and given its rank-1 update in place."""
    b, h, dk, dv = state.shape
    decay = g.exp()[..., None]  # [B, H, 1]
    read = torch.stack([k, q], dim=2) @ state  # [B, H, 2, Dv]: k^T S, q^T S
    delta = (v - decay * read[:, :, 0]) * beta[..., None]
    out = decay * read[:, :, 1] + (q * k).sum(-1, keepdim=True) * delta
    state.mul_(decay[..., None])
    state.view(b * h, dk, dv).baddbmm_(k.reshape(b * h, dk, 1), delta.view(b * h, 1, dv))
    return out


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

    def __post_init__(self):
        self.per_key_head = self.in_qkvz is not None  # Qwen3-Next's projection layout
        own = [self.in_qkvz, self.in_ba] if self.per_key_head else [
            self.in_qkv, self.in_z, self.in_b, self.in_a]  # fmt: skip
        # decode reads one row through every input projection: one matvec instead of two or
        # four; the separate weights are let go (no second copy)
        fused = fuse_rows(*own)
        self.in_sizes = [p.out_features for p in own]
        self.projections = own if fused is None else [fused]
        self.in_qkvz = self.in_ba = self.in_qkv = self.in_z = self.in_b = self.in_a = None
        self.decay_rate = -self.a_log.float().exp()  # g = decay_rate * softplus(a + dt_bias)
        self.conv_taps = self.conv[:, 0].float()  # [C, K]: decode's conv as a dot product

    def _project(self, x):
        b, t, _ = x.shape
        hk, per = self.k_heads, self.v_heads // self.k_heads
        outs = [p(x) for p in self.projections]
        if len(outs) == 1:
            outs = outs[0].split(self.in_sizes, -1)
        if not self.per_key_head:
            mixed, z, beta, a = outs
            return mixed, z.reshape(b, t, self.v_heads, self.v_dim), beta, a
        qkvz, ba = outs
        qkvz = qkvz.reshape(b, t, hk, 2 * self.k_dim + 2 * per * self.v_dim)
        q, k, v, z = qkvz.split([self.k_dim, self.k_dim, per * self.v_dim, per * self.v_dim], -1)
        beta, a = ba.reshape(b, t, hk, 2 * per).split([per, per], -1)
        mixed = torch.cat([q.reshape(b, t, -1), k.reshape(b, t, -1), v.reshape(b, t, -1)], -1)
        z = z.reshape(b, t, self.v_heads, self.v_dim)
        return mixed, z, beta.reshape(b, t, -1), a.reshape(b, t, -1)

    def _convolve_step_(self, mixed, conv_state):
        """One token: the conv as a dot product over its K-tap window (F.conv1d with C groups
        costs milliseconds of set-up per call on the CPU), the window shifted in place.
        mixed [B, 1, C] -> [B, 1, C] float32."""
        window = torch.cat([conv_state, mixed.transpose(1, 2)], dim=-1)  # [B, C, K]
        conv_state.copy_(window[..., 1:])
        return ACTIVATIONS[self.act]((window.float() * self.conv_taps).sum(-1))[:, None]

    def _heads(self, mixed, beta, a):
        """q, k [B, Hv, T, Dk] (normalised, value heads grouped by key head), v [B, Hv, T, Dv],
        g, beta [B, Hv, T], all float32."""
        b, t, _ = mixed.shape
        key_dim = self.k_heads * self.k_dim
        q, k, v = mixed.float().split([key_dim, key_dim, self.v_heads * self.v_dim], -1)
        per = self.v_heads // self.k_heads
        q, k = (
            l2_normalise(y.reshape(b, t, self.k_heads, self.k_dim)).repeat_interleave(per, 2)
            for y in (q, k)
        )
        q = q * self.k_dim**-0.5
        v = v.reshape(b, t, self.v_heads, self.v_dim)
        g = self.decay_rate * F.softplus(a.float() + self.dt_bias.float())
        beta = beta.float().sigmoid()
        return (y.transpose(1, 2) for y in (q, k, v, g, beta))  # heads first

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
        if t == 1:  # decode: the recurrent form, the cache's state tensors updated in place
            q, k, v, g, beta = self._heads(self._convolve_step_(mixed, conv_state), beta, a)
            o = delta_rule_step_(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[..., 0], beta[..., 0], state)
            o = o[:, None]  # [B, 1, Hv, Dv]
        else:
            mixed, conv_state = causal_conv(mixed, conv_state, self.conv, None, self.act)
            q, k, v, g, beta = self._heads(mixed, beta, a)
            o, state = delta_rule_chunked(q, k, v, g, beta, state)
            o = o.transpose(1, 2)  # [B, T, Hv, Dv]
            conv_state = conv_state.contiguous()
        cache.set_state(self.layer, conv_state, state)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)
        o = self.norm.float() * o * F.silu(z.float())
        return self.out(o.to(x.dtype).reshape(b, t, -1))
