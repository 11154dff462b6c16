"""The key/value cache: per layer, tensors that grow along the sequence as tokens arrive.

Standard attention stores K and V as [B, kv_heads, S, D]; MLA stores its compressed latent
[B, S, kv_lora_rank] and the shared rotated key [B, S, rope_dim] (DeepSeek-V2 paper, §2.1),
about 1/30 of the bytes of expanded keys and values. Storage grows in chunks so a long
context costs memory only once it is used.
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
        out = []
        for buf, t in zip(stored, new, strict=True):
            buf.narrow(seq_dim, start, t.shape[seq_dim]).copy_(t)
            out.append(buf.narrow(seq_dim, 0, end))
        return out

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (reuse of a common prompt prefix)."""
        self.length = min(self.length, length)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.layers if ts for t in ts)
