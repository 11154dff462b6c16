"""Rotary position embeddings: the frequency tables and the two rotation layouts.

Frequencies follow transformers/modeling_rope_utils.py (`_compute_default_rope_parameters`,
`_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`,
`_compute_yarn_parameters`), which for YaRN is DeepSeek-V2/V3's own `yarn_find_correction_range`
and `yarn_get_mscale` (DeepSeek's modeling_deepseek.py). Two layouts:
- "half" (Llama, Mixtral, Qwen, OLMoE): dims i and i + d/2 form a pair (`rotate_half`).
- "interleaved" (DeepSeek MLA): dims 2i and 2i+1 form a pair. Only q·k products see these
  dims (the rotated key lives in the cache, never in values), so the output order of the
  pairs is free; we write [even', odd'] as transformers' `apply_rotary_pos_emb_interleave`.
"""

from __future__ import annotations

import math

import torch

from converters.core.errors import UnsupportedArchitecture

from .config import RopeParams


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))


def _llama3(inv_freq: torch.Tensor, p: RopeParams) -> torch.Tensor:
    old_len = p.original_max_position_embeddings
    low_wavelen = old_len / p.low_freq_factor
    high_wavelen = old_len / p.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / p.factor, inv_freq)
    smooth = (old_len / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor)
    smoothed = (1 - smooth) * scaled / p.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(p: RopeParams, dim: int, max_positions: int) -> tuple[torch.Tensor, float]:
    factor = p.factor
    original = p.original_max_position_embeddings
    if factor is None:
        factor = max_positions / original
    attention_factor = p.attention_factor
    if attention_factor is None:
        if p.mscale and p.mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, p.mscale) / yarn_get_mscale(
                factor, p.mscale_all_dim
            )
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = p.beta_fast or 32
    beta_slow = p.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(p.theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as the reference: avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = p.theta ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 = keep the original (extrapolated) frequency
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def rope_frequencies(
    p: RopeParams, head_dim: int, max_positions: int
) -> tuple[torch.Tensor, float]:
    """(inv_freq [dim/2] float32, attention scaling applied to cos and sin)."""
    dim = int(head_dim * p.partial_rotary_factor)
    if p.rope_type == "default":
        return _default_inv_freq(p.theta, dim), 1.0
    if p.rope_type == "linear":
        return _default_inv_freq(p.theta, dim) / p.factor, 1.0
    if p.rope_type == "llama3":
        return _llama3(_default_inv_freq(p.theta, dim), p), 1.0
    if p.rope_type == "yarn":
        return _yarn(p, dim, max_positions)
    raise UnsupportedArchitecture(
        f"RoPE scaling {p.rope_type!r} is not supported by the torch engine.",
        "Use the llama.cpp engine (convert to GGUF) for this model.",
    )


class Rotary:
    """cos/sin for given positions, computed as transformers computes them (float32)."""

    def __init__(self, p: RopeParams, head_dim: int, max_positions: int, interleaved: bool):
        self.inv_freq, self.scaling = rope_frequencies(p, head_dim, max_positions)
        self.interleaved = interleaved
        self.rotary_dim = self.inv_freq.numel() * 2

    def to(self, device: torch.device) -> Rotary:
        self.inv_freq = self.inv_freq.to(device)
        return self

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # T = tokens, R = rotary dim; returns [T, R] (half layout) or [T, R/2] (interleaved)
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        if not self.interleaved:
            freqs = torch.cat((freqs, freqs), dim=-1)
        return (freqs.cos() * self.scaling).to(dtype), (freqs.sin() * self.scaling).to(dtype)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, heads, T, D]; rotates the first `rotary_dim` dims."""
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        if self.interleaved:
            even, odd = rot[..., 0::2], rot[..., 1::2]
            out = torch.cat([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
        else:
            half = rot.shape[-1] // 2
            rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
            out = rot * cos + rotated * sin
        return out if rest.numel() == 0 else torch.cat([out, rest], dim=-1)
