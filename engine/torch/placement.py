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

The fast tier is one fixed buffer of slots, uint8 [slots, row bytes] on the fast device,
with an expert -> slot map: a miss that moves an expert is one copy into a free (or
evicted) slot, never a new tensor, and decode's compiled kernel (compiled.py) gathers the
chosen experts straight out of the buffer by slot index, or out of the slow tier's own
stacked rows by expert index for those computed in place.

Prefetch (prefetch.py) puts predicted experts into slots ahead of need through a `Copier`
that may copy in the background: the cache still does every bookkeeping step in the calling
thread, and joins a slot's copy before the slot is read (`locate`) or given to another
expert (`_evict_one`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .experts import ExpertFFN, SlowTier, expert_flops, stacked_views
from .prefetch import Copier, PrefetchCounters

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
class ExpertCache:
    """Serves `run(layer, expert, x)` and decode's `locate`, keeping up to `budget_bytes` of
    experts on `device` in a buffer of fixed slots."""

    slow: SlowTier
    device: torch.device
    budget_bytes: int
    policy: str = "lru"
    on_miss: str = "auto"
    hot_set: list[tuple[int, int]] = field(default_factory=list)  # static policy
    cost: CostModel | None = None
    counters: CacheCounters = field(default_factory=CacheCounters)
    n_layers: int = 1
    copier: Copier = field(default_factory=Copier)  # how prefetch moves rows (prefetch.py)
    prefetch_counters: PrefetchCounters = field(default_factory=PrefetchCounters)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown expert cache policy {self.policy!r}; one of {POLICIES}")
        if self.on_miss not in ON_MISS:
            raise ValueError(f"unknown on_miss {self.on_miss!r}; one of {ON_MISS}")
        self.cost = self.cost or CostModel.for_device(self.device)
        # one slot size for every layer (architectures here give all MoE layers one shape)
        self.row_bytes = max(self.slow.layout(layer)[1] for layer in range(self.n_layers))
        n_experts = sum(self.slow.n_experts(layer) for layer in range(self.n_layers))
        self.n_slots = min(self.budget_bytes // self.row_bytes, n_experts)
        self.n_experts_total = n_experts
        # pages are touched only when a slot is first written, so an unused budget costs nothing
        self.buffer = torch.empty(
            self.n_slots, self.row_bytes, dtype=torch.uint8, device=self.device
        )
        self.slot_of: OrderedDict[tuple[int, int], int] = OrderedDict()  # LRU order
        self.free = list(range(self.n_slots - 1, -1, -1))  # popped from the end: slot 0 first
        self.ffns: list[ExpertFFN | None] = [None] * self.n_slots
        self._fast_views: dict[int, dict] = {}
        self.uses: dict[tuple[int, int], int] = {}
        self.steps = 0
        self.inflight: dict[tuple[int, int], object] = {}  # prefetch copies not yet joined
        self.predicted: dict[int, set[int]] = {}  # layer -> experts predicted this step
        self.by_layer: list[set[int]] = [set() for _ in range(self.n_layers)]  # resident
        self.pin = self.device.type == "cuda" and torch.cuda.is_available()
        if self.policy == "static":
            for key in self.hot_set[: self.n_slots]:
                self._move(key)

    @property
    def used_bytes(self) -> int:
        return len(self.slot_of) * self.row_bytes

    # -- tiers ----------------------------------------------------------------------------

    def _move(self, key: tuple[int, int]) -> int:
        """Copy expert `key` from the slow tier into a free slot; returns the slot."""
        slot = self.free.pop()
        row = self.slow.row(*key)
        if self.pin and self.slow.is_view():
            row = row.pin_memory()  # a pinned staging copy lets the copy run asynchronously
        self.buffer[slot, : row.numel()].copy_(row, non_blocking=self.pin)
        self.counters.bytes_moved += row.numel()
        self._place(key, slot)
        return slot

    def _place(self, key: tuple[int, int], slot: int) -> None:
        self.slot_of[key] = slot
        self.by_layer[key[0]].add(key[1])
        self.ffns[slot] = None  # views of the previous occupant's layout are stale

    def ffn(self, slot: int, layer: int) -> ExpertFFN:
        """The per-expert compute object over slot `slot` (prefill and the plain decode path)."""
        ffn = self.ffns[slot]
        if ffn is None:
            ffn = self.ffns[slot] = self.slow.ffn(layer, self.buffer[slot])
        return ffn

    def fast_views(self, layer: int) -> dict[str, torch.Tensor]:
        """Typed [slots, ...] views of the buffer in `layer`'s layout (for the compiled kernel)."""
        layout = self.slow.layout(layer)[0]
        key = id(layout)
        if key not in self._fast_views:
            self._fast_views[key] = stacked_views(self.buffer, layout)
        return self._fast_views[key]

    def warm(self, keys: list[tuple[int, int]], dtype: torch.dtype) -> None:
        """Move `keys` in now (at load) instead of on first use, kernels prepared."""
        for key in keys:
            if key in self.slot_of or not self.free:
                continue
            slot = self._move(key)
            self.ffn(slot, key[0]).prepare(dtype)

    def _victim(self) -> tuple[int, int]:
        """The expert an eviction would remove now."""
        if self.policy == "lru":
            return next(iter(self.slot_of))
        return min(self.slot_of, key=lambda k: self.uses.get(k, 0))

    def _evict_one(self, victim: tuple[int, int] | None = None) -> None:
        victim = victim or self._victim()
        self._join(victim)  # its slot may still be being written
        self.free.append(self.slot_of.pop(victim))
        self.by_layer[victim[0]].discard(victim[1])

    def _join(self, key: tuple[int, int]) -> None:
        handle = self.inflight.pop(key, None)
        if handle is not None:
            self.copier.wait(handle)

    def join_all(self) -> None:
        """Every prefetch copy finished (before closing, and in tests)."""
        for key in list(self.inflight):
            self._join(key)

    def _admit(self, key) -> bool:
        """Make room for `key` if the policy lets it in."""
        if self.n_slots == 0 or self.policy == "static":
            return False
        frequency_full = self.policy == "frequency" and not self.free
        if frequency_full and self.uses.get(self._victim(), 0) >= self.uses[key]:
            return False
        if not self.free:
            self._evict_one()
        return True

    # -- the entry points ------------------------------------------------------------------

    def begin_step(self) -> None:
        """Called once per forward pass (for the reuse estimate)."""
        self.steps += 1
        self.predicted.clear()

    def prefetch(self, layer: int, experts: list[int]) -> None:
        """Bring `layer`'s predicted `experts` into slots ahead of need (prefetch.py); counts
        nothing as a use, so hits and misses stay what the routed experts find."""
        self.prefetch_counters.predicted += len(experts)
        self.predicted[layer] = set(experts)
        if self.policy == "static":
            return  # a fixed hot set: nothing is ever evicted for a guess
        # never more than the slots: the later ones would evict the earlier
        for expert in experts[: self.n_slots]:
            key = (layer, expert)
            if key in self.slot_of:
                continue
            if not self.free:
                victim = self._prefetch_victim(layer)
                if victim is None:
                    break
                if self.policy == "frequency" and self.uses.get(victim, 0) > self.uses.get(key, 0):
                    continue  # the frequency policy's admission rule, for a use not yet made
                self._evict_one(victim)
            slot = self.free.pop()
            row = self.slow.row(*key)
            handle = self.copier.start(self.buffer[slot, : row.numel()], row)
            if handle is not None:  # None: copied already
                self.inflight[key] = handle
            self.counters.bytes_moved += row.numel()
            self.prefetch_counters.prefetched += 1
            self._place(key, slot)

    def _prefetch_victim(self, layer: int) -> tuple[int, int] | None:
        """The slot a guess for `layer` may take. Decode uses layers in a cycle, so LRU's
        victim is the expert whose next use is nearest: `layer`'s own from the last token,
        the likeliest hits. A guess takes instead from the layer whose next use is furthest
        (the one that just ran, then the one before, ...), its least used expert, and never
        from `layer` itself, whose routed experts are about to be looked up."""
        for back in range(1, self.n_layers):
            resident = self.by_layer[(layer - back) % self.n_layers]
            if resident:
                other = (layer - back) % self.n_layers
                return other, min(resident, key=lambda e: (self.uses.get((other, e), 0), e))
        return None

    def locate(self, layer: int, expert: int, n_tokens: int) -> int | None:
        """The slot serving (layer, expert) now, moving it in if that is the cheaper way;
        None: compute it where it lives. Counts the use (hit, miss, move) once."""
        key = (layer, expert)
        self.uses[key] = self.uses.get(key, 0) + 1
        if layer in self.predicted:
            self.prefetch_counters.routed += 1
            self.prefetch_counters.routed_predicted += expert in self.predicted[layer]
        slot = self.slot_of.get(key)
        if slot is not None:
            self._join(key)
            self.counters.hits += 1
            if self.policy == "lru":
                self.slot_of.move_to_end(key)
            return slot
        self.counters.misses += 1
        layout, nbytes = self.slow.layout(layer)
        if self._should_move(key, layout, nbytes, n_tokens) and self._admit(key):
            return self._move(key)
        self.counters.computed_in_place += 1
        if not self.slow.is_view():
            self.counters.bytes_moved += nbytes  # read out of the checkpoint
        return None

    def all_resident(self) -> bool:
        """Every expert of every layer in a slot: nothing can miss or be evicted."""
        return len(self.slot_of) == self.n_experts_total

    def slot_table(self, layer: int) -> torch.Tensor:
        """expert -> slot for `layer` (int64 [experts]); only when `all_resident()`."""
        n = self.slow.n_experts(layer)
        return torch.tensor([self.slot_of[(layer, e)] for e in range(n)], device=self.device)

    def count_resident_uses(self, layers: list[int], experts: list[list[int]]) -> None:
        """What `locate` counts for experts that are all resident (hits, uses, LRU order),
        experts[i] those of layers[i], for decode steps that gathered them by `slot_table`
        inside a compiled graph."""
        lru, uses = self.policy == "lru", self.uses
        for layer, row in zip(layers, experts, strict=True):
            self.counters.hits += len(row)
            for e in row:
                key = (layer, e)
                uses[key] = uses.get(key, 0) + 1
                if lru:
                    self.slot_of.move_to_end(key)

    def would_evict(self, layer: int, expert: int) -> int | None:
        """The slot a miss on (layer, expert) could take from another expert now, if any."""
        if (layer, expert) in self.slot_of or self.free or not self.slot_of:
            return None
        return None if self.policy == "static" else self.slot_of[self._victim()]

    def run(self, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
        slot = self.locate(layer, expert, x.shape[0])
        if slot is not None:
            return self.ffn(slot, layer)(x)
        ffn = self.slow.ffn(layer, self.slow.row(layer, expert))
        if x.device != ffn.row.device:
            return ffn(x.to(ffn.row.device)).to(x.device)
        return ffn(x)

    def _should_move(self, key, layout, nbytes: int, n_tokens: int) -> bool:
        if self.on_miss != "auto":
            return self.on_miss == "move"
        reuses = self.cost.reuse_horizon * self.uses[key] / max(self.steps, 1)
        return self.cost.move_is_cheaper(nbytes, expert_flops(layout, n_tokens), reuses)

    def resident(self) -> set[tuple[int, int]]:
        return set(self.slot_of)
