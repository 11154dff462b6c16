"""The expert cache: a byte budget of experts on the fast tier, a policy, and a cost model.

Fast tier: GPU memory on CUDA (rows copied from pinned RAM), RAM without a GPU (rows copied
out of the memory-mapped file). On a miss the cost model picks between moving the expert to
the fast tier (and caching it) and computing it where it lives, as ktransformers and
llama.cpp's `-ot`/`--n-cpu-moe` offloading do by hand: for one decode token a CPU pass over
an expert in RAM beats a PCIe copy, for a long prefill the copy pays for itself.
Policies decide what stays:
- "lru": evict the least recently used expert.
- "frequency": evict the least used expert (counts over the session); admit a new expert
  only if it has been used more often than the one it would evict.
- "static": a fixed hot set chosen from recorded usage counts; never evicts, misses always
  compute in place.
Whatever the placement, the arithmetic is the same, so outputs do not depend on the budget.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .experts import ExpertFFN, SlowTier, expert_flops

POLICIES = ("lru", "frequency", "static")
ON_MISS = ("auto", "move", "compute")


@dataclass
class CostModel:
    """Seconds to serve one expert use, from bandwidths and compute rates (bytes/s, flop/s).

    Defaults: a CPU-only machine (DDR4-class copy and read bandwidth, a slower first touch of
    mmap'd pages) and, for CUDA, a PCIe 4.0 x16 link with pinned memory.
    """

    link_bytes_per_s: float = 8e9  # slow -> fast copy
    slow_bytes_per_s: float = 4e9  # computing where the expert lives (mmap pages, CPU RAM)
    fast_bytes_per_s: float = 12e9
    slow_flops: float = 2e11
    fast_flops: float = 4e11
    reuse_horizon: float = 4.0  # future steps a cached expert is expected to serve

    @classmethod
    def for_device(cls, device: torch.device) -> CostModel:
        if device.type == "cuda":
            return cls(link_bytes_per_s=25e9, slow_bytes_per_s=20e9, fast_bytes_per_s=1.5e12,
                       slow_flops=5e11, fast_flops=5e13)  # fmt: skip
        return cls()

    def _time(self, nbytes: int, flops: float, bw: float, rate: float) -> float:
        return max(nbytes / bw, flops / rate)  # roofline: memory- or compute-bound

    def move_is_cheaper(self, nbytes: int, flops: float, expected_reuses: float) -> bool:
        fast = self._time(nbytes, flops, self.fast_bytes_per_s, self.fast_flops)
        slow = self._time(nbytes, flops, self.slow_bytes_per_s, self.slow_flops)
        uses = 1.0 + expected_reuses
        return nbytes / self.link_bytes_per_s + uses * fast < uses * slow


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    bytes_moved: int = 0
    computed_in_place: int = 0

    def snapshot(self) -> CacheCounters:
        return CacheCounters(self.hits, self.misses, self.bytes_moved, self.computed_in_place)


@dataclass
class _Slot:
    ffn: ExpertFFN
    nbytes: int


@dataclass
class ExpertCache:
    """Serves `run(layer, expert, x)`, keeping up to `budget_bytes` of experts on `device`."""

    slow: SlowTier
    device: torch.device
    budget_bytes: int
    policy: str = "lru"
    on_miss: str = "auto"
    hot_set: list[tuple[int, int]] = field(default_factory=list)  # static policy
    cost: CostModel | None = None
    counters: CacheCounters = field(default_factory=CacheCounters)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown expert cache policy {self.policy!r}; one of {POLICIES}")
        if self.on_miss not in ON_MISS:
            raise ValueError(f"unknown on_miss {self.on_miss!r}; one of {ON_MISS}")
        self.cost = self.cost or CostModel.for_device(self.device)
        self.slots: OrderedDict[tuple[int, int], _Slot] = OrderedDict()
        self.used_bytes = 0
        self.uses: dict[tuple[int, int], int] = {}
        self.steps = 0
        self.pin = self.device.type == "cuda" and torch.cuda.is_available()
        if self.policy == "static":
            for key in self.hot_set:
                nbytes = self.slow.layout(key[0])[1]
                if self.used_bytes + nbytes > self.budget_bytes:
                    break
                self._insert(key, self._move(key))

    # -- tiers ----------------------------------------------------------------------------

    def _move(self, key: tuple[int, int]) -> ExpertFFN:
        row = self.slow.row(*key)
        if self.device.type == "cuda":
            row = (row.pin_memory() if self.pin else row).to(self.device, non_blocking=True)
        elif self.slow.is_view():
            row = row.clone()  # out of the mmap'd file into RAM
        self.counters.bytes_moved += row.numel()
        return self.slow.ffn(key[0], row)

    def warm(self, keys: list[tuple[int, int]], dtype: torch.dtype) -> None:
        """Move `keys` in now (at load) instead of on first use, kernels prepared."""
        for key in keys:
            nbytes = self.slow.layout(key[0])[1]
            if key in self.slots or self.used_bytes + nbytes > self.budget_bytes:
                continue
            ffn = self._move(key)
            ffn.prepare(dtype)
            self._insert(key, ffn)

    def _insert(self, key, ffn: ExpertFFN) -> None:
        nbytes = ffn.row.numel()
        self.slots[key] = _Slot(ffn, nbytes)
        self.used_bytes += nbytes

    def _evict_one(self) -> None:
        if self.policy == "lru":
            key = next(iter(self.slots))
        else:
            key = min(self.slots, key=lambda k: self.uses.get(k, 0))
        self.used_bytes -= self.slots.pop(key).nbytes

    def _admit(self, key, nbytes: int) -> bool:
        """Make room for `key` if the policy lets it in."""
        if nbytes > self.budget_bytes or self.policy == "static":
            return False
        if self.policy == "frequency":
            need = self.used_bytes + nbytes - self.budget_bytes
            if need > 0:
                victims = sorted(self.slots, key=lambda k: self.uses.get(k, 0))
                freed, i = 0, 0
                while freed < need:
                    if self.uses.get(victims[i], 0) >= self.uses[key]:
                        return False
                    freed += self.slots[victims[i]].nbytes
                    i += 1
        while self.used_bytes + nbytes > self.budget_bytes:
            self._evict_one()
        return True

    # -- the one entry point ------------------------------------------------------------

    def begin_step(self) -> None:
        """Called once per forward pass (for the reuse estimate)."""
        self.steps += 1

    def run(self, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
        key = (layer, expert)
        self.uses[key] = self.uses.get(key, 0) + 1
        slot = self.slots.get(key)
        if slot is not None:
            self.counters.hits += 1
            if self.policy == "lru":
                self.slots.move_to_end(key)
            return slot.ffn(x)
        self.counters.misses += 1
        layout, nbytes = self.slow.layout(layer)
        if self._should_move(key, layout, nbytes, x.shape[0]) and self._admit(key, nbytes):
            ffn = self._move(key)
            self._insert(key, ffn)
            return ffn(x)
        return self._compute_in_place(key, x)

    def _should_move(self, key, layout, nbytes: int, n_tokens: int) -> bool:
        if self.on_miss != "auto":
            return self.on_miss == "move"
        reuses = self.cost.reuse_horizon * self.uses[key] / max(self.steps, 1)
        return self.cost.move_is_cheaper(nbytes, expert_flops(layout, n_tokens), reuses)

    def _compute_in_place(self, key, x: torch.Tensor) -> torch.Tensor:
        self.counters.computed_in_place += 1
        row = self.slow.row(*key)
        if not self.slow.is_view():
            self.counters.bytes_moved += row.numel()  # read out of the checkpoint
        ffn = self.slow.ffn(key[0], row)
        if x.device != row.device:
            return ffn(x.to(row.device)).to(x.device)
        return ffn(x)

    def resident(self) -> set[tuple[int, int]]:
        return set(self.slots)
