"""The key/value cache: per layer, tensors that grow along the sequence as tokens arrive.

Standard attention stores K and V as [B, kv_heads, S, D]; MLA stores its compressed latent
[B, S, kv_lora_rank] and the shared rotated key [B, S, rope_dim] (DeepSeek-V2 paper, §2.1),
about 1/30 of the bytes of expanded keys and values. Storage grows in chunks so a long
context costs memory only once it is used. Sliding-window layers (Gemma 4) keep only the
positions their window still sees (WindowedKVCache).
"""

from __future__ import annotations

import torch

GROW = 256  # positions added per growth step: few reallocations, little slack


class KVCache:
    def __init__(self, n_layers: int, max_positions: int):
        self.max_positions = max_positions
        self.layers: list[list[torch.Tensor] | None] = [None] * n_layers
        self.length = 0  # positions already in the cache (set by the model after a forward)

    def update(
        self, layer: int, start: int, seq_dim: int, *new: torch.Tensor
    ) -> list[torch.Tensor]:
        """Write `new` tensors at positions [start, start+T) and return views of [0, start+T)."""
        end = start + new[0].shape[seq_dim]
        return [buf.narrow(seq_dim, 0, end) for buf in self._store(layer, start, seq_dim, new)]

    def write(self, layer: int, start: int, seq_dim: int, *new: torch.Tensor) -> None:
        """As `update`, without the views it returns: the compiled decode step reads the
        whole buffers, and 24 views a token are some 40 us of Python (12 layers)."""
        self._store(layer, start, seq_dim, new)

    def _store(self, layer: int, start: int, seq_dim: int, new) -> list[torch.Tensor]:
        """Copy `new` into the layer's buffers at [start, start+T), grown first where they
        are too short; the buffers."""
        end = start + new[0].shape[seq_dim]
        stored = self.layers[layer]
        if stored is None or stored[0].shape[seq_dim] < end:
            capacity = min(max(end, -(-end // GROW) * GROW), max(self.max_positions, end))
            grown = []
            for i, t in enumerate(new):
                shape = list(t.shape)
                shape[seq_dim] = capacity
                buf = t.new_zeros(shape)
                if stored is not None:
                    buf.narrow(seq_dim, 0, start).copy_(stored[i].narrow(seq_dim, 0, start))
                grown.append(buf)
            stored = self.layers[layer] = grown
        for buf, t in zip(stored, new, strict=True):
            buf.narrow(seq_dim, start, t.shape[seq_dim]).copy_(t)
        return stored

    def truncate(self, length: int) -> int:
        """Forget positions from `length` on (reuse of a common prompt prefix); returns the
        length kept (a cache of recurrent states may have to go back further)."""
        self.length = min(self.length, length)
        return self.length

    def checkpoint(self) -> None:
        """A point `truncate` can return to; every position can, for keys and values."""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.layers if ts for t in ts)


class StateCache(KVCache):
    """KV for the attention layers and, for linear-attention layers, their conv and
    recurrent state (linear_attention.py). A recurrent state sums the whole prefix, so it
    cannot be cut back: `checkpoint()` remembers the states at the current length (turn
    boundaries), and `truncate` goes back to the latest checkpoint at or before the length
    asked for (or to nothing), so the caller recomputes from there. Decode updates the state
    tensors in place (no allocation per token), so a checkpoint is a copy, and going back to
    one copies it again: the states are small (Qwen3.5-35B-A3B: about 2 MiB a layer).
    """

    KEEP = 4  # checkpoints kept: the last turns of one conversation

    def __init__(self, n_layers: int, max_positions: int):
        super().__init__(n_layers, max_positions)
        self.states: dict[int, list[torch.Tensor]] = {}
        self.checkpoints: list[tuple[int, dict[int, list[torch.Tensor]]]] = []

    def state(self, layer: int) -> list[torch.Tensor] | None:
        return self.states.get(layer)

    def set_state(self, layer: int, *tensors: torch.Tensor) -> None:
        self.states[layer] = list(tensors)

    def checkpoint(self) -> None:
        if self.checkpoints and self.checkpoints[-1][0] == self.length:
            return
        self.checkpoints.append((self.length, self.copy_states(self.states)))
        del self.checkpoints[: -self.KEEP]

    def truncate(self, length: int) -> int:
        if length >= self.length:
            return self.length
        self.checkpoints = [c for c in self.checkpoints if c[0] <= length]
        self.length, states = self.checkpoints[-1] if self.checkpoints else (0, {})
        self.states = self.copy_states(states)  # decode writes into them; the checkpoint stays
        return self.length

    @staticmethod
    def copy_states(states: dict[int, list[torch.Tensor]]) -> dict[int, list[torch.Tensor]]:
        """A copy a later decode step cannot write into (the Gated DeltaNet layers update
        their state tensors in place)."""
        return {layer: [t.clone() for t in ts] for layer, ts in states.items()}

    def nbytes(self) -> int:
        kept = {id(t): t for ts in self.states.values() for t in ts}
        for _, states in self.checkpoints:
            kept.update({id(t): t for ts in states.values() for t in ts})
        return super().nbytes() + sum(t.numel() * t.element_size() for t in kept.values())


class WindowedKVCache(KVCache):
    """Full KV for global layers (as KVCache) and, for sliding-window layers (Gemma 4), only
    the positions their window still sees. A sliding layer's keys and values [B, Hkv, S, D]
    live in a buffer that holds positions [first, first + capacity); when it fills up, the
    last `window - 1 + SLACK` positions move to a fresh buffer and the rest are forgotten.

    Going back to a shorter prefix (`truncate`) needs the window before it: kept if the
    prefix is at most SLACK positions shorter than the last compaction left, else the latest
    `checkpoint()` at or before it (turn boundaries) holds it, else the cache starts over.
    Positions before a checkpoint's length are never written again while the checkpoint is
    kept (writes start at the current length, and a truncate drops later checkpoints), and a
    compaction writes into a fresh buffer, so a checkpoint holds references, not copies.
    """

    SLACK = 64  # positions kept behind the window: short rewinds need no checkpoint
    KEEP = 4  # checkpoints kept: the last turns of one conversation

    def __init__(self, n_layers: int, max_positions: int, windows: dict[int, int]):
        super().__init__(n_layers, max_positions)
        self.windows = windows  # sliding layer -> its window
        self.windowed: dict[int, tuple[int, list[torch.Tensor]]] = {}  # layer -> (first, kv)
        self.checkpoints: list[tuple[int, dict[int, tuple[int, list[torch.Tensor]]]]] = []

    def update_window(
        self, layer: int, start: int, *new: torch.Tensor
    ) -> tuple[int, list[torch.Tensor]]:
        """Write `new` [B, H, T, D] at positions [start, start+T); returns the first position
        the new queries may see and views of [that position, start+T)."""
        window, end = self.windows[layer], start + new[0].shape[2]
        seen = max(0, start - (window - 1))
        first, stored = self.windowed.get(layer, (0, None))
        if (stored is None and start > 0) or (stored is not None and first > seen):
            raise RuntimeError(f"sliding layer {layer} lost positions before {start}")
        if stored is None or end - first > stored[0].shape[2]:
            kept = max(first, start - (window - 1 + self.SLACK))
            capacity = end - kept + GROW
            grown = []
            for i, t in enumerate(new):
                buf = t.new_zeros(*t.shape[:2], capacity, t.shape[3])
                if stored is not None:
                    buf[:, :, : start - kept].copy_(stored[i][:, :, kept - first : start - first])
                grown.append(buf)
            first, stored = kept, grown
            self.windowed[layer] = (first, stored)
        for buf, t in zip(stored, new, strict=True):
            buf[:, :, start - first : end - first].copy_(t)
        return seen, [buf[:, :, seen - first : end - first] for buf in stored]

    def _rewinds_to(self, windowed: dict, length: int) -> bool:
        return all(
            first <= max(0, length - (self.windows[layer] - 1))
            for layer, (first, _) in windowed.items()
        )

    def checkpoint(self) -> None:
        if self.checkpoints and self.checkpoints[-1][0] == self.length:
            return
        self.checkpoints.append((self.length, dict(self.windowed)))
        del self.checkpoints[: -self.KEEP]

    def truncate(self, length: int) -> int:
        if length >= self.length:
            return self.length
        self.checkpoints = [c for c in self.checkpoints if c[0] <= length]
        if self._rewinds_to(self.windowed, length):
            self.length = length
            return length
        usable = [c for c in self.checkpoints if self._rewinds_to(c[1], c[0])]
        self.length, windowed = usable[-1] if usable else (0, {})
        self.windowed = dict(windowed)
        return self.length

    def nbytes(self) -> int:
        kept = {id(t): t for _, ts in self.windowed.values() for t in ts}
        for _, windowed in self.checkpoints:
            kept.update({id(t): t for _, ts in windowed.values() for t in ts})
        return super().nbytes() + sum(t.numel() * t.element_size() for t in kept.values())
