"""Mamba-2's mixer (Nemotron-H's "M" layers; Dao & Gu, "Transformers are SSMs", arXiv
2405.21060): one input projection gives the gate z, the conv input x|B|C and the step
sizes dt per head; a causal depthwise conv1d (with bias, then silu) runs over x|B|C; then
the selective state space model with a scalar decay per head,

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,     y_t = S_t C_t + D x_t

(S [head_dim, state] per head; B and C shared by the heads of a group; dt = softplus(dt +
dt_bias)). y is gated by silu(z), RMS-normalised per group of channels and projected out.
Decode runs that recurrence one token at a time; prefill its chunked form (the SSD
algorithm, §6 of the paper): within a chunk the outputs are a decay-masked C B^T product
applied to dt x, and the state is carried from chunk to chunk. Both follow the plain-torch
references transformers' modeling_nemotron_h.py falls back to, in float32, including one
quirk: the chunked form clamps dt to at least `time_step_min`, the recurrent one does not.

The layer keeps its state in the cache (kv_cache.StateCache): the last K-1 conv inputs and
S, replaced - never written in place - on every call. (The cache copies a state when it
checkpoints a turn boundary anyway, since the Gated DeltaNet layers update theirs in place.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import Linear, causal_conv


def ssd_step(x, dt, a, b, c, d, state):
    """One token: x [B, H, P], dt [B, H], a [H], b, c [B, H, N], d [H], state [B, H, P, N]."""
    state = state * (dt * a).exp()[..., None, None] + (dt[..., None] * x)[..., None] * b[:, :, None]
    y = torch.einsum("bhpn,bhn->bhp", state, c)
    return y + d[:, None] * x, state


def ssd_chunked(x, dt, a, b, c, d, state, chunk: int):
    """x [B, T, H, P], dt [B, T, H], b, c [B, T, H, N] -> (y [B, T, H, P], final state)."""
    t = x.shape[1]
    pad = (-t) % chunk  # zero dt: the padded steps neither decay nor add to the state
    xs, dts, bs, cs = (F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, b, c))
    n = xs.shape[1] // chunk
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    out = []
    for i in range(n):
        part = slice(i * chunk, (i + 1) * chunk)
        xdt = xs[:, part] * dts[:, part, :, None]  # [B, L, H, P]
        cum = (dts[:, part] * a).cumsum(1)  # [B, L, H] log decay from the chunk's start
        # decay[l, s] = exp(cum_l - cum_s) for s <= l, else 0
        gap = cum[:, :, None] - cum[:, None, :]  # [B, L, S, H]
        decay = gap.masked_fill(~causal[None, :, :, None], float("-inf")).exp()
        scores = torch.einsum("blhn,bshn->blsh", cs[:, part], bs[:, part]) * decay
        y = torch.einsum("blsh,bshp->blhp", scores, xdt)
        y = y + torch.einsum("blhn,bhpn->blhp", cs[:, part], state) * cum.exp()[..., None]
        out.append(y)
        to_end = (cum[:, -1:] - cum).exp()  # [B, L, H]
        state = state * cum[:, -1].exp()[..., None, None] + torch.einsum(
            "blhp,blhn->bhpn", xdt * to_end[..., None], bs[:, part]
        )
    y = torch.cat(out, dim=1)[:, :t]
    return y + d[:, None] * x, state


@dataclass
class Mamba2Mixer:
    """B = batch, T = new tokens, H = heads of P channels (inner = H P), G groups of state
    size N, C = conv channels (inner + 2 G N)."""

    in_proj: Linear  # -> [z (inner) | x B C (C) | dt (H)]
    conv: torch.Tensor  # [C, 1, K]
    conv_bias: torch.Tensor | None  # [C]
    dt_bias: torch.Tensor  # [H]
    a_log: torch.Tensor  # [H]
    d: torch.Tensor  # [H]
    norm: torch.Tensor  # [inner], applied per group of inner / G channels
    out: Linear
    heads: int
    head_dim: int
    groups: int
    state_size: int
    layer: int
    chunk: int = 128
    dt_min: float = 0.0
    eps: float = 1e-5
    act: str = "silu"

    def __call__(self, x, cache) -> torch.Tensor:
        bsz, t, _ = x.shape
        inner, n_bc = self.heads * self.head_dim, self.groups * self.state_size
        z, xbc, dt = self.in_proj(x).split([inner, inner + 2 * n_bc, self.heads], -1)
        stored = cache.state(self.layer)
        if stored is None:
            conv_state = xbc.new_zeros(bsz, xbc.shape[-1], self.conv.shape[-1] - 1)
            state = x.new_zeros(
                bsz, self.heads, self.head_dim, self.state_size, dtype=torch.float32
            )
        else:
            conv_state, state = stored
        xbc, conv_state = causal_conv(xbc, conv_state, self.conv, self.conv_bias, self.act)
        xs, b, c = xbc.float().split([inner, n_bc, n_bc], -1)
        per = self.heads // self.groups
        b, c = (
            v.view(bsz, t, self.groups, self.state_size).repeat_interleave(per, 2) for v in (b, c)
        )
        xs = xs.view(bsz, t, self.heads, self.head_dim)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        a, d = -self.a_log.float().exp(), self.d.float()
        if t == 1:
            y, state = ssd_step(xs[:, 0], dt[:, 0], a, b[:, 0], c[:, 0], d, state)
            y = y[:, None]
        else:
            dt = dt.clamp(min=self.dt_min)
            y, state = ssd_chunked(xs, dt, a, b, c, d, state, self.chunk)
        cache.set_state(self.layer, conv_state, state)
        y = y.reshape(bsz, t, inner) * F.silu(z.float())
        y = y.view(bsz, t, self.groups, inner // self.groups)
        y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).view(bsz, t, inner)
        return self.out((self.norm.float() * y).to(x.dtype))
