"""Decode's routed experts from both tiers at once: the fast tier's (resident) experts are
launched without waiting for them while the calling thread computes the missed ones where
they live, then the two are joined in expert order.

On CUDA the fast tier is GPU memory and a launch returns at once (kernels queue on the
stream), so the CPU computes the misses out of pinned / memory-mapped RAM while the GPU
runs the resident experts: the hybrid ktransformers and llama.cpp's `--n-cpu-moe` run, with
the split decided per token by the expert cache instead of per tensor at load. The one
device -> host copy of the token's activation is made before anything is launched, since
it waits for the stream. On the CPU (fast tier RAM, slow tier the memory-mapped file) the
resident experts run on one worker thread instead; that pays only where the misses wait on
page faults, so it is on there only when asked for (`overlap="on"`).

Whatever runs first, each expert's output is computed by the same ops on the same bytes as
on the sequential path (MoEBlock._one_token) and the weighted outputs are summed in the
same expert order, so the result is the same bits. Slots are never reused under a running
expert: before a miss moves an expert into a slot that an expert of this token still has to
read, the pending resident experts are run first, as the sequential path would.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from converters.core.errors import ItamaeError

OVERLAP = ("auto", "on", "off")


def overlap_mode(value: object) -> str:
    if value is True:
        return "on"
    if value in (None, False):
        return "off" if value is False else "auto"
    mode = str(value).strip().lower()
    if mode not in OVERLAP:
        raise ItamaeError(f"Unknown overlap {value!r}.",
                          "Use overlap=auto (on with a GPU), on or off.")  # fmt: skip
    return mode


class TierOverlap:
    """`mix(cache, layer, flat, pairs)`: the weighted sum of one token's routed experts.

    pairs: (expert, weight) in ascending expert order; flat [1, H] on the model's device."""

    def __init__(self, device: torch.device):
        self.device = device
        # the CPU has no queue to launch into: a worker thread plays the GPU's part
        self.worker = None if device.type == "cuda" else ThreadPoolExecutor(1)

    @classmethod
    def for_mode(cls, mode: str, device: torch.device) -> TierOverlap | None:
        if mode == "on" or (mode == "auto" and device.type == "cuda"):
            return cls(device)
        return None

    def mix(self, cache, layer: int, flat: torch.Tensor, pairs) -> torch.Tensor:
        outputs: list[torch.Tensor | None] = [None] * len(pairs)
        resident: list[tuple[int, int]] = []  # (position, slot) not yet computed
        in_place: list[int] = []  # positions computed where they live
        for pos, (expert, _) in enumerate(pairs):
            victim = cache.would_evict(layer, expert)
            if victim is not None and any(slot == victim for _, slot in resident):
                self._resident(cache, layer, flat, pairs, resident, outputs)  # before reuse
                resident = []
            slot = cache.locate(layer, expert, 1)
            if slot is None:
                in_place.append(pos)
            else:
                resident.append((pos, slot))
        # the slow tier is host memory (the mapped file, or rows read from a checkpoint):
        # the activation goes there before any launch, since this copy waits for the stream
        host = flat.to("cpu") if in_place else None
        launched = self._launch(cache, layer, flat, pairs, resident, outputs)
        for pos in in_place:  # meanwhile, here
            expert, weight = pairs[pos]
            ffn = cache.slow.ffn(layer, cache.slow.row(layer, expert))
            outputs[pos] = ffn(host.to(ffn.row.device)).to(flat.device) * weight
        if launched is not None:
            launched.result()
        out = outputs[0]
        for y in outputs[1:]:  # expert order, as the sequential sum
            out = out + y
        return out.to(flat.dtype)

    def _launch(self, cache, layer, flat, pairs, resident, outputs):
        if self.worker is None or not resident:
            self._resident(cache, layer, flat, pairs, resident, outputs)
            return None
        return self.worker.submit(self._resident, cache, layer, flat, pairs, resident, outputs)

    @staticmethod
    def _resident(cache, layer, flat, pairs, resident, outputs) -> None:
        for pos, slot in resident:
            outputs[pos] = cache.ffn(slot, layer)(flat) * pairs[pos][1]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown(wait=True)
