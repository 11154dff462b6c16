"""Attention: grouped-query attention (Llama, Mixtral, Qwen, OLMoE) and DeepSeek's
multi-head latent attention (MLA) with its compressed KV cache.

GQA follows transformers' LlamaAttention with the per-architecture extras: qkv bias
(Qwen2-MoE), per-head q/k RMSNorm (Qwen3-MoE), whole-projection q/k RMSNorm and clip_qkv
(OLMoE), sliding window (Mixtral, Qwen when enabled), per-head attention sinks (gpt-oss), a
sigmoid output gate per head whose rows q_proj carries beside the query's (Qwen3-Next).
MLA follows DeepSeek-V2 (arXiv 2405.04434, §2.1) in its "absorbed" form, as DeepSeek's
inference code and llama.cpp run it: the cache keeps only the normalised latent c_kv and the
rotated shared key; kv_b_proj's key half is folded into the query and its value half applied
after attention, so keys and values are never expanded per head.
Softmax scale: head_dim^-0.5, times yarn mscale(all_dim)^2 for DeepSeek with YaRN.
With a lightning indexer (DeepSeek-V3.2, engine/torch/sparse_attention.py) each query reads
only the positions it chose: decode gathers them from the cache, prefill masks the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import kv_attention
from .kv_cache import KVCache
from .layers import Linear, rms_norm
from .rope import Rotary
from .sparse_attention import LightningIndexer, chosen_mask


def causal_mask(q_len: int, start: int, window: int | None, device) -> torch.Tensor | None:
    """bool [q_len, start+q_len], True where query i may attend key j."""
    if q_len == 1 and window is None:
        return None
    rows = torch.arange(start, start + q_len, device=device)[:, None]
    cols = torch.arange(start + q_len, device=device)[None, :]
    allowed = cols <= rows
    if window is not None:
        allowed &= cols > rows - window
    return allowed


@functools.lru_cache(maxsize=2)
def causal_bias(q_len: int, start: int, window: int | None, device, dtype) -> torch.Tensor | None:
    """causal_mask as the additive mask scaled_dot_product_attention applies (0 or -inf), made
    once per prefill chunk and shared by its layers. Given the bool mask, each layer built a
    [T, S] mask and each call converted it to this float one again (fresh allocations of
    16-32 MB a call at 16k). What that cost depends on the machine's load: a 16k-token
    chunked prefill of the qwen3_moe fixture (3 layers, bf16) took 50.1 s CPU with them and
    27.7 s with this in one run at load average 7.5, and the same (13.5-15.8 s) at 2.5-4.5
    (tests/benchmarks/bench_chunked_prefill.py); the logits are the same bits. Two kept (a
    chunk's [T, S] in the model's dtype each): the layers of one chunk share one."""
    allowed = causal_mask(q_len, start, window, device)
    if allowed is None:
        return None
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return bias.masked_fill_(~allowed, float("-inf"))


@dataclass
class GQAttention:
    """B = batch, T = new tokens, S = cached + new, Hq/Hkv = heads, D = head dim."""

    q: Linear
    k: Linear
    v: Linear
    o: Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rotary: Rotary
    layer: int
    eps: float = 1e-6
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    qk_norm_per_head: bool = True  # Qwen3: per head; OLMoE: over the whole projection
    clip_qkv: float | None = None
    sliding_window: int | None = None
    sinks: torch.Tensor | None = None  # [Hq] float32: gpt-oss's per-head sink logit
    output_gate: bool = False  # q_proj rows per head: [query, gate]

    def __call__(self, x, cos, sin, cache: KVCache, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        gate = None
        if self.output_gate:
            q, gate = q.view(b, t, self.n_heads, 2 * self.head_dim).chunk(2, dim=-1)
            q, gate = q.reshape(b, t, -1), gate.reshape(b, t, -1)
        if self.q_norm is not None and not self.qk_norm_per_head:
            q, k = rms_norm(q, self.q_norm, self.eps), rms_norm(k, self.k_norm, self.eps)
        if self.clip_qkv is not None:
            q, k, v = (z.clamp(-self.clip_qkv, self.clip_qkv) for z in (q, k, v))
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None and self.qk_norm_per_head:
            q, k = rms_norm(q, self.q_norm, self.eps), rms_norm(k, self.k_norm, self.eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, D]
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.rotary.apply(q, cos, sin), self.rotary.apply(k, cos, sin)
        k, v = cache.update(self.layer, start, 2, k, v)  # [B, Hkv, S, D]
        if self.sinks is not None:
            mask = causal_mask(t, start, self.sliding_window, x.device)
            out = sink_attention(q, k, v, self.sinks, mask)
        elif t == 1 and self.sliding_window is None:
            out = decode_attention(q, k, v)
        else:
            bias = causal_bias(t, start, self.sliding_window, x.device, q.dtype)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, enable_gqa=self.n_heads != self.n_kv_heads
            )
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.o(out if gate is None else out * torch.sigmoid(gate))


def sink_attention(q, k, v, sinks: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention with one learned sink logit per head that takes probability mass but
    has no value (gpt-oss; transformers' eager_attention_forward with `s_aux`, llama.cpp's
    attn_sinks). q [B, Hq, T, D], k and v [B, Hkv, S, D], sinks [Hq] -> [B, Hq, T, D]."""
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    grouped = q.reshape(b, hkv, hq // hkv * t, d).float()  # heads sharing a KV head as rows
    scores = (grouped @ k.float().transpose(-1, -2)).view(b, hq, t, -1) * d**-0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    sink = sinks.float().view(1, hq, 1, 1).expand(b, hq, t, 1)
    probs = torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :-1]  # [B, Hq, T, S]
    out = probs.reshape(b, hkv, hq // hkv * t, -1) @ v.float()
    return out.view(b, hq, t, d).to(q.dtype)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """One query per head (decode) against every cached key: two small products.

    q [B, Hq, 1, D], k and v [B, Hkv, S, D] -> [B, Hq, 1, D]. The query heads sharing a KV
    head become rows of one product, so K and V are read once and never repeated per head.
    Scores, softmax and sums are float32 (as in prefill's flash kernel), whatever the cache's
    dtype. A bf16 cache is read as it is stored (kv_attention.py's kernel widens each row in
    registers): converting it for a float32 matmul copied the whole cache on every step, 32 MB
    a layer at 16k positions of the bench model. Other caches (float32: nothing to convert)
    take two matmuls, several times faster on the CPU than scaled_dot_product_attention,
    whose flash kernel is built for long queries. `scale`: head_dim^-0.5 if None (Gemma 4
    normalises q and k instead and scales by 1).
    """
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    grouped = q.reshape(b, hkv, hq // hkv, d).float()  # [B, Hkv, G, D]
    scale = d**-0.5 if scale is None else scale
    if b == 1 and kv_attention.applies(k) and kv_attention.applies(v):
        probs = (kv_attention.scores(grouped[0], k[0]) * scale).softmax(dim=-1)
        out = kv_attention.mix(probs, v[0])
    else:
        scores = (grouped @ k.float().transpose(-1, -2)) * scale  # [B, Hkv, G, S]
        out = scores.softmax(dim=-1) @ v.float()
    return out.to(q.dtype).reshape(b, hq, 1, d)


@dataclass
class MLAttention:
    """MLA. L = kv_lora_rank, N = qk_nope_head_dim, R = qk_rope_head_dim, V = v_head_dim."""

    kv_a: Linear  # hidden -> L + R
    kv_a_norm: torch.Tensor
    kv_b: torch.Tensor  # [H * (N + V), L], float
    o: Linear
    n_heads: int
    nope_dim: int
    rope_dim: int
    v_dim: int
    rotary: Rotary
    layer: int
    scale: float
    eps: float = 1e-6
    q: Linear | None = None  # without q LoRA (V2-Lite)
    q_a: Linear | None = None
    q_a_norm: torch.Tensor | None = None
    q_b: Linear | None = None
    indexer: LightningIndexer | None = None  # DeepSeek Sparse Attention (V3.2)

    def __post_init__(self):
        kv_b = self.kv_b.view(self.n_heads, self.nope_dim + self.v_dim, -1)
        self.w_uk = kv_b[:, : self.nope_dim]  # [H, N, L]
        self.w_uv = kv_b[:, self.nope_dim :]  # [H, V, L]

    def __call__(self, x, cos, sin, cache: KVCache, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        q_latent = None if self.q is not None else rms_norm(self.q_a(x), self.q_a_norm, self.eps)
        q = self.q(x) if q_latent is None else self.q_b(q_latent)
        q = q.view(b, t, self.n_heads, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rot = q.split([self.nope_dim, self.rope_dim], dim=-1)  # [B, H, T, N|R]
        latent, k_rot = self.kv_a(x).split([self.kv_b.shape[1], self.rope_dim], dim=-1)
        latent = rms_norm(latent, self.kv_a_norm, self.eps)  # [B, T, L]
        q_rot = self.rotary.apply(q_rot, cos, sin)
        k_rot = self.rotary.apply(k_rot[:, None], cos, sin)[:, 0]  # [B, T, R], shared by heads
        mask = causal_mask(t, start, None, x.device)
        if self.indexer is None:
            latent, k_rot = cache.update(self.layer, start, 1, latent, k_rot)  # [B, S, L|R]
        else:  # sparse attention: the cache also keeps the indexer's keys
            new_keys = self.indexer.keys(x, start)
            latent, k_rot, keys = cache.update(self.layer, start, 1, latent, k_rot, new_keys)
            chosen = self.indexer.select(x, q_latent, keys, start)  # [B, T, top_k] or None
            if chosen is not None and t == 1:  # decode reads only the chosen positions
                latent, k_rot = (_gather(z, chosen[:, 0]) for z in (latent, k_rot))
            elif chosen is not None:
                mask = chosen_mask(chosen, mask, latent.shape[1])
        q_latent_heads = torch.einsum("bhtn,hnl->bhtl", q_nope, self.w_uk)
        scores = torch.einsum("bhtl,bsl->bhts", q_latent_heads, latent)
        scores = scores + torch.einsum("bhtr,bsr->bhts", q_rot, k_rot)
        scores = scores.float() * self.scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1).to(x.dtype)
        out_latent = torch.einsum("bhts,bsl->bhtl", probs, latent)
        out = torch.einsum("bhtl,hvl->bthv", out_latent, self.w_uv)  # [B, T, H, V]
        return self.o(out.reshape(b, t, -1))


def _gather(cached: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """cached [B, S, X] at positions [B, K] -> [B, K, X]."""
    return cached.gather(1, positions[:, :, None].expand(-1, -1, cached.shape[-1]))
