"""DeepSeek-V4's attention: shared-KV multi-query attention over a sliding window, plus, in
its compressed layers, the compressed entries of the whole past (engine/torch/compressor.py).

Per layer (paper §2.3; transformers' `DeepseekV4Attention`):
- q from a LoRA (wq_a, RMSNorm, wq_b), each head then RMS-normalised without a weight;
  one KV head (wkv, RMSNorm) read as both key and value;
- RoPE on the last `qk_rope_head_dim` dims, in interleaved pairs: the main RoPE in
  sliding-window layers, the compressed branch's (compress_rope_theta, YaRN) in CSA / HCA
  layers. Values carry the rotation too, so the output's rope dims are rotated back by the
  query's position;
- keys: the last `sliding_window` positions (the query's own included), then the compressed
  entries the query may see (HCA: every complete window; CSA: the indexer's top-k of them);
- softmax with a learned sink logit per head (attn_sink), as gpt-oss's;
- grouped output projection: heads in `o_groups` groups, each projected by its own block
  of wo_a to `o_lora_rank`, then wo_b over all groups.

The cache keeps per layer only the window's last `sliding_window - 1` keys and the
compressors' states, not every position: `CompressedCache` checkpoints them at turn
boundaries (as linear attention's recurrent state is), so a chat turn resumes exactly.

B = batch, H = heads, T = new tokens, P = window positions kept, N = compressed entries,
D = head dim, G = o_groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import sink_attention
from .compressor import Compressor, CompressorState, Indexer, rope_at, rotate_tail, visible_entries
from .hyper_connections import unweighted_rms_norm
from .kv_cache import StateCache
from .layers import Linear, rms_norm
from .rope import Rotary


@dataclass(frozen=True)
class AttentionState:
    window: torch.Tensor  # [B, P <= sliding_window - 1, D]
    compressor: CompressorState | None = None
    indexer: CompressorState | None = None

    def tensors(self) -> list[torch.Tensor]:
        parts = [self.window]
        for state in (self.compressor, self.indexer):
            parts += state.tensors() if state is not None else []
        return parts


class CompressedCache(StateCache):
    """One `AttentionState` per layer; `truncate` goes back to the latest turn checkpoint
    at or before the length asked for (StateCache), since a window and a compressor's
    pending tokens cannot be cut back to an arbitrary position."""

    def state(self, layer: int) -> AttentionState | None:
        return self.states.get(layer)

    def set_state(self, layer: int, state: AttentionState) -> None:
        self.states[layer] = state

    @staticmethod
    def copy_states(states: dict[int, AttentionState]) -> dict[int, AttentionState]:
        # the layers replace their AttentionState, never write into it: references suffice
        return dict(states)

    def nbytes(self) -> int:
        kept = {id(t): t for s in self.states.values() for t in s.tensors()}
        for _, states in self.checkpoints:
            kept.update({id(t): t for s in states.values() for t in s.tensors()})
        return sum(t.numel() * t.element_size() for t in kept.values())


@dataclass
class SharedKVAttention:
    wq_a: Linear  # hidden -> q_lora_rank
    q_norm: torch.Tensor
    wq_b: Linear  # q_lora_rank -> H * D
    wkv: Linear  # hidden -> D
    kv_norm: torch.Tensor
    wo_a: torch.Tensor  # [G * o_lora_rank, H * D / G]
    wo_b: Linear  # G * o_lora_rank -> hidden
    sinks: torch.Tensor  # [H] float32
    n_heads: int
    head_dim: int
    window: int
    groups: int
    rotary: Rotary
    layer: int
    eps: float
    compressor: Compressor | None = None
    indexer: Indexer | None = None  # CSA only

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, cache: CompressedCache):
        b, t, _ = x.shape
        cos, sin = rope_at(self.rotary, positions)
        q_latent = rms_norm(self.wq_a(x), self.q_norm, self.eps)
        q = self.wq_b(q_latent).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        q = rotate_tail(unweighted_rms_norm(q, self.eps), cos, sin)  # [B, H, T, D]
        kv = rotate_tail(rms_norm(self.wkv(x), self.kv_norm, self.eps), cos, sin)  # [B, T, D]
        state = cache.state(self.layer) or self._empty(x)
        keys = torch.cat([state.window, kv], dim=1)  # [B, P + T, D]
        kept = keys[:, max(0, keys.shape[1] - self.window + 1) :]  # the next call's window
        mask = self._window_mask(positions, keys.shape[1]).expand(b, t, -1)
        compressor = indexer = None
        if self.compressor is not None:
            compressor = self.compressor(x, state.compressor)
            entries = compressor.entries  # [B, N, D]
            if self.indexer is not None:
                indexer = self.indexer.compressor(x, state.indexer)
                seen = self.indexer.select(x, q_latent, indexer.entries, positions)
            else:
                seen = visible_entries(positions, entries.shape[1], self.compressor.ratio)
            keys = torch.cat([keys, entries], dim=1)
            mask = torch.cat([mask, seen.expand(b, t, -1)], dim=-1)
        cache.set_state(self.layer, AttentionState(kept, compressor, indexer))
        values = keys[:, None]  # [B, 1, S, D]: the keys are the values
        out = sink_attention(q, values, values, self.sinks, mask[:, None])  # [B, H, T, D]
        out = rotate_tail(out, cos, -sin).transpose(1, 2)  # [B, T, H, D]
        return self.wo_b(self._grouped_output(out.reshape(b, t, self.groups, -1)))

    def _empty(self, x: torch.Tensor) -> AttentionState:
        window = x.new_zeros(x.shape[0], 0, self.head_dim)
        compressor = self.compressor.empty(x) if self.compressor is not None else None
        indexer = self.indexer.compressor.empty(x) if self.indexer is not None else None
        return AttentionState(window, compressor, indexer)

    def _window_mask(self, positions: torch.Tensor, n_keys: int) -> torch.Tensor:
        """bool [T, P + T]: the window's keys end at the last new position."""
        key_positions = torch.arange(n_keys, device=positions.device) + (positions[-1] + 1 - n_keys)
        rows, cols = positions[:, None], key_positions[None, :]
        return (cols <= rows) & (cols > rows - self.window)

    def _grouped_output(self, grouped: torch.Tensor) -> torch.Tensor:
        """[B, T, G, H * D / G] -> [B, T, G * o_lora_rank], each group by its own block."""
        b, t, g, width = grouped.shape
        w = self.wo_a.to(grouped.dtype).view(g, -1, width).transpose(1, 2)  # [G, in, o_lora]
        y = torch.bmm(grouped.reshape(-1, g, width).transpose(0, 1), w)  # [G, B*T, o_lora]
        return y.transpose(0, 1).reshape(b, t, -1)
