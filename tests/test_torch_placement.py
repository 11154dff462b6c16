"""Expert placement: outputs independent of the cache budget and policy; the cache's own
hit/miss/bytes accounting equal to an independent count.

The independent count replays the experts transformers' own routers chose (forward hooks,
tests/test_torch_parity.py's RouterCounts) through a plain LRU model of the cache written
here, and compares hits, misses and bytes moved with the engine's counters.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import pytest
import torch

from converters.formats.torch_writer import convert_to_torch
from tests.fixtures.reference import reference_model
from tests.test_torch_parity import RouterCounts, load_model, prompt_ids, run_ours, run_reference

BUDGETS = (0.10, 0.50, 1.00)
POLICIES = ("lru", "frequency", "static")
DECODE = 8


@pytest.fixture(scope="module")
def qwen2(hf_checkpoint):
    folder = hf_checkpoint("qwen2_moe")  # shared expert + gate, 8 experts top-4, 3 MoE layers
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    return folder, ref, ids


@pytest.fixture(scope="module")
def qwen2_int8(qwen2, tmp_path_factory):
    return convert_to_torch(qwen2[0], tmp_path_factory.mktemp("placement") / "int8", "int8")


def _run(folder, ids, fed, dtype=torch.float32, **placement):
    model = load_model(folder, dtype, **placement)
    prefill, steps = run_ours(model, ids, fed)
    return model, torch.cat([prefill, torch.stack(steps)])


@pytest.mark.parametrize("source", ["hf_fp32", "torch_int8_mmap", "torch_int8_compiled"])
def test_same_logits_whatever_the_budget_and_policy(qwen2, qwen2_int8, source):
    """Plain kernels (hf_fp32, torch_int8_mmap) and the compiled decode kernel gathering from
    the cache's slots and from the memory-mapped file (torch_int8_compiled: the compiled step,
    whose graphs gather the experts themselves at budget 1.0 and hand them to the MoE block's
    path below it); budget 10% is fewer slots (2) than experts per token (4)."""
    folder, ref, ids = qwen2
    _, _, fed = run_reference(ref, ids, steps=DECODE)
    folder, dtype = (folder, torch.float32) if source == "hf_fp32" else (qwen2_int8, torch.bfloat16)
    compiled = source == "torch_int8_compiled"
    _run_as = functools.partial(_run, compile=compiled)
    base_model, base = _run_as(folder, ids, fed, dtype, expert_budget=1.0)
    assert (base_model.fused is not None) == compiled
    if compiled:  # all resident: the compiled step gathered the experts inside its graphs
        assert all(plan.in_graph for plan in base_model.step._plans.values())
    usage = base_model.usage.counts.tolist()
    row_bytes = base_model.cache.slow.layout(0)[1]
    for policy in POLICIES:
        for budget in BUDGETS:
            model, logits = _run_as(folder, ids, fed, dtype, expert_budget=budget, policy=policy,
                                    expert_usage=usage if policy == "static" else None)  # fmt: skip
            diff = (logits - base).abs().max().item()
            assert diff <= 1e-6 * base.abs().max().item(), (policy, budget, diff)
            cache = model.cache
            assert cache.used_bytes <= cache.budget_bytes
            if budget < 1.0:
                assert cache.counters.misses > 0
                assert len(cache.resident()) <= budget * 24 + 1e-9
            if policy == "static":  # the most used experts were placed first
                assert len(cache.resident()) == min(
                    24, int(round(budget * 24 * row_bytes)) // row_bytes
                )


def _independent_lru(order, slots: int) -> tuple[int, int]:
    """hits, misses of an LRU cache of `slots` experts, every miss moved in."""
    cache: OrderedDict = OrderedDict()
    hits = misses = 0
    for layer, experts in order:
        for e in experts:
            if (layer, e) in cache:
                hits += 1
                cache.move_to_end((layer, e))
                continue
            misses += 1
            if slots:
                if len(cache) >= slots:
                    cache.popitem(last=False)
                cache[(layer, e)] = True
    return hits, misses


@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
def test_hit_miss_accounting_matches_an_independent_count(qwen2, budget):
    folder, ref, ids = qwen2
    # fp32 from the hub folder: the same routing as transformers (test_torch_parity checks it)
    model = load_model(folder, expert_budget=budget, policy="lru", on_miss="move", preload=False)
    counter = RouterCounts(ref, model.args.n_experts)
    _, _, fed = run_reference(ref, ids, steps=DECODE)  # records the order of router calls
    run_ours(model, ids, fed)
    c, row_bytes = model.cache.counters, model.cache.slow.layout(0)[1]
    slots = model.cache.budget_bytes // row_bytes
    assert len(counter.order) == (1 + DECODE) * len(model.moe_layers)  # prefill + decode steps
    hits, misses = _independent_lru(counter.order, slots)
    assert (c.hits, c.misses) == (hits, misses)
    assert c.bytes_moved == misses * row_bytes  # every miss read one expert row in
    assert c.computed_in_place == 0


def test_compute_in_place_moves_nothing_out_of_the_mmap(qwen2, qwen2_int8):
    folder, ref, ids = qwen2
    model = load_model(qwen2_int8, torch.bfloat16, expert_budget=0.5, on_miss="compute")
    model.usage.trace = []  # (layer, experts) per MoE call, as the block saw them
    _, _, fed = run_reference(ref, ids, steps=DECODE)
    run_ours(model, ids, fed)
    assert len(model.usage.trace) == (1 + DECODE) * len(model.moe_layers)
    accesses = sum(len(experts) for _, experts in model.usage.trace)
    c = model.cache.counters
    assert (c.hits, c.misses, c.computed_in_place, c.bytes_moved) == (0, accesses, accesses, 0)


def test_every_policy_counts_each_access_once(qwen2):
    folder, ref, ids = qwen2
    counter = RouterCounts(ref, 8)
    _, _, fed = run_reference(ref, ids, steps=DECODE)
    accesses = sum(len(experts) for _, experts in counter.order)
    for policy in POLICIES:
        model = load_model(folder, expert_budget=0.5, policy=policy)
        run_ours(model, ids, fed)
        c = model.cache.counters
        # each forward pass touches each (layer, chosen expert) once, whatever the tokens
        assert c.hits + c.misses == accesses, policy
        assert c.hits > 0, policy
