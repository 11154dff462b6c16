"""Next-layer expert prefetch: layer i+1's router, applied early to the hidden state layer i
leaves, names the experts layer i+1 will probably use; those not on the fast tier are copied
into slots while layer i+1's attention runs, so that its routed experts are hits.

References: Eliseev & Mazur, "Fast Inference of Mixture-of-Experts Language Models with
Offloading" (mixtral-offloading, arXiv 2312.17238, "speculative expert loading": the next
layer's gating function on the previous layer's hidden states) and Hwang et al., "Pre-gated
MoE" (ISCA 2024, which trains a pre-gate for the same purpose; here the model's own router is
used untrained, so the prediction is only as good as the residual stream is stable across a
layer, and it is measured: `PrefetchCounters`).

Only the placement changes: a prefetched expert is the same bytes in a slot, and every
expert's output is the same bits from either tier (placement.py), so the logits do not
depend on whether prefetch is on. Decode only (one token): a prefill's routed set is most
of the experts, and the cost model already moves what pays for itself there.

How the bytes move (`Copier`):
- "sync": in the calling thread (tests; and where nothing can overlap).
- "thread": one background thread copies rows out of the memory-mapped slow tier into RAM
  slots while the calling thread computes attention (torch's copy releases the GIL).
- "cuda": the background thread stages each row in pinned memory and queues the host ->
  device copy on a side stream after an event that marks the end of the compute stream's
  work so far (the slot's previous occupant may still be read by queued kernels); the
  compute stream waits on the copy's event before the first kernel that reads the slot.
The cache keeps every map and counter in the calling thread; the copier touches only bytes,
and the cache joins a copy before anything reads or reuses its slot.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from converters.core.errors import ItamaeError

from .layers import rms_norm

PREFETCH = ("off", "next_layer")


def prefetch_mode(value: object) -> str:
    """The backend option `prefetch` (off | next_layer; False/None mean off)."""
    if value in (None, False):
        return "off"
    if value is True:
        return "next_layer"
    mode = str(value).strip().lower()
    if mode not in PREFETCH:
        raise ItamaeError(
            f"Unknown prefetch {value!r}.",
            "Use prefetch=next_layer (copy layer i+1's predicted experts in during layer i) "
            "or prefetch=off.",
        )
    return mode


@dataclass
class PrefetchCounters:
    """Prediction quality (whatever the cache held) and what prefetch moved."""

    predicted: int = 0  # (layer, expert) predictions made
    routed: int = 0  # routed uses in layers that had a prediction this step
    routed_predicted: int = 0  # of those, predicted
    prefetched: int = 0  # predictions not resident, copied in ahead of need

    @property
    def prediction_hit_rate(self) -> float:
        """Share of the routed experts the early router named (= precision too when both
        sets hold K experts per layer)."""
        return self.routed_predicted / max(1, self.routed)


class Copier:
    """Copies one slow-tier row into one fast-tier slot; `wait` joins a started copy."""

    def start(self, dest: torch.Tensor, row: torch.Tensor):
        dest.copy_(row)
        return None

    def wait(self, handle) -> None:
        pass

    def close(self) -> None:
        pass


class ThreadCopier(Copier):
    def __init__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="itamae-prefetch")

    def start(self, dest: torch.Tensor, row: torch.Tensor) -> Future:
        return self.pool.submit(dest.copy_, row)

    def wait(self, handle: Future) -> None:
        handle.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class CudaCopier(ThreadCopier):
    """Pinned staging and a side stream (see the module docstring); CUDA only."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.side = torch.cuda.Stream(device)

    def start(self, dest: torch.Tensor, row: torch.Tensor) -> Future:
        reads_done = torch.cuda.Event()
        reads_done.record(torch.cuda.current_stream(self.device))
        return self.pool.submit(self._copy, dest, row, reads_done)

    def _copy(self, dest, row, reads_done) -> torch.cuda.Event:
        staged = row.pin_memory()  # the host-side copy, off the calling thread
        copied = torch.cuda.Event()
        with torch.cuda.stream(self.side):
            self.side.wait_event(reads_done)
            # the caching host allocator keeps `staged` until this copy has run
            dest.copy_(staged, non_blocking=True)
            copied.record(self.side)
        return copied

    def wait(self, handle: Future) -> None:
        # the compute stream waits on the GPU; the calling thread only waits for the queueing
        torch.cuda.current_stream(self.device).wait_event(handle.result())


def make_copier(kind: str, device: torch.device) -> Copier:
    if kind == "sync":
        return Copier()
    if kind == "thread":
        return ThreadCopier()
    if kind == "cuda":
        return CudaCopier(device)
    raise ValueError(f"unknown copier {kind!r}")


def default_copier(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "thread"


class NextLayerPrefetch:
    """After decoder layer i, predicts the experts of layer i+1 and asks the cache to bring
    the missing ones in. `targets`: decoder index i -> layer i+1, for the layers i+1 that
    are router-routed MoE layers of the plain pre-norm shape (`ffn`, `post_attention_norm`,
    `eps`; transformer.py picks them)."""

    def __init__(self, targets: dict[int, object], cache):
        self.targets, self.cache = targets, cache

    def after_layer(self, i: int, x: torch.Tensor) -> None:
        """x: the hidden state layer i produced, [1, 1, H] (decode)."""
        nxt = self.targets.get(i)
        if nxt is None:
            return  # (with every expert resident the prediction is still made and counted)
        block = nxt.ffn
        h = rms_norm(x.reshape(-1, x.shape[-1]), nxt.post_attention_norm, nxt.eps)
        # [1, K]: best first where the router sorts (no groups, no correction bias); when
        # fewer slots than K exist the first ones are brought in
        _, experts = block.router(h, block.experts_per_token)
        self.cache.prefetch(block.layer, experts[0].tolist())
