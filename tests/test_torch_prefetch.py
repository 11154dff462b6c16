"""Next-layer prefetch (engine/torch/prefetch.py) and the overlapped decode (overlap.py).

- Placement invariance: the same logits with prefetch on and off (every copier), and with
  the two tiers overlapped and in turn, at budgets 10/50/100%.
- The prediction counted by the cache equals one made independently on transformers' model:
  its layer i+1 router (post-attention norm, then the gate module) applied to its layer i's
  output, compared with the experts its own routers then chose.
- Prefetch turns misses into hits, and the bytes it moves are counted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from converters.core.errors import ItamaeError
from engine.torch.backend import load
from tests.test_torch_parity import load_model, run_ours, run_reference
from tests.test_torch_placement import qwen2, qwen2_int8  # noqa: F401 (fixtures)

BUDGETS = (0.10, 0.50, 1.00)
DECODE = 8


def _logits(folder, ids, fed, dtype, **placement):
    model = load_model(folder, dtype, **placement)
    prefill, steps = run_ours(model, ids, fed)
    model.cache.join_all()
    return model, torch.cat([prefill, torch.stack(steps)])


@pytest.mark.slow  # 12 models per source, 35-50 s each on the loaded 2-core machine
@pytest.mark.parametrize("source", ["hf_fp32", "torch_int8_mmap", "torch_int8_compiled"])
def test_same_logits_with_prefetch_and_overlap_on_or_off(qwen2, qwen2_int8, source, monkeypatch):  # noqa: F811
    """Budget 10% is 2 slots for 4 experts per token: prefetch and misses evict each other's
    slots; the thread copier and the overlap worker run beside the calling thread. Compiled:
    decode's kernel gathers from slots a background copy has just filled (overlap does not
    apply there: the compiled kernel takes both tiers itself). Prefetch runs layer by layer,
    so it leaves out the compiled decode step (compile=True's other half, its own graph and
    bits): the runs without prefetch leave it out too."""
    folder, ref, ids = qwen2
    _, _, fed = run_reference(ref, ids, steps=DECODE)
    folder, dtype = (folder, torch.float32) if source == "hf_fp32" else (qwen2_int8, torch.bfloat16)
    compiled = source == "torch_int8_compiled"
    monkeypatch.setenv("ITAMAE_COMPILE_STEP", "0")
    for budget in BUDGETS:
        base_model, base = _logits(folder, ids, fed, dtype, expert_budget=budget, compile=compiled)
        assert base_model.prefetch is None and base_model.overlap is None  # CPU: off by default
        assert (base_model.fused is not None) == compiled
        for copier in ("sync", "thread"):
            for overlap in ("off",) if compiled else ("off", "on"):
                model, logits = _logits(folder, ids, fed, dtype, expert_budget=budget,
                                        compile=compiled, prefetch="next_layer",
                                        prefetch_copier=copier, overlap=overlap)  # fmt: skip
                assert torch.equal(logits, base), (budget, copier, overlap)
                assert (model.overlap is not None) == (overlap == "on")
                c = model.cache
                assert c.used_bytes <= c.budget_bytes and not c.inflight
                if budget < 1.0:
                    assert c.prefetch_counters.prefetched > 0, (budget, copier)


def test_prefetch_keeps_the_logits_under_every_policy(qwen2_int8):  # noqa: F811
    ids = torch.arange(3, 19)[None]
    fed = [5, 9, 2, 7, 11, 4]
    base_model, base = _logits(qwen2_int8, ids, fed, torch.bfloat16, expert_budget=1.0,
                               compile=False)  # fmt: skip
    usage = base_model.usage.counts.tolist()
    for policy in ("frequency", "static"):
        model, logits = _logits(qwen2_int8, ids, fed, torch.bfloat16, expert_budget=0.5,
                                compile=False, policy=policy, prefetch="next_layer",
                                expert_usage=usage if policy == "static" else None)  # fmt: skip
        assert torch.equal(logits, base), policy
        assert model.cache.used_bytes <= model.cache.budget_bytes
        if policy == "static":  # a fixed hot set: guesses are counted, nothing is moved
            assert model.cache.prefetch_counters.prefetched == 0
            assert model.cache.prefetch_counters.predicted > 0


def test_overlap_alone_gives_the_sequential_bits_and_counts(qwen2_int8):  # noqa: F811
    ids = torch.arange(3, 19)[None]
    fed = [5, 9, 2, 7, 11, 4]
    for budget in BUDGETS:
        seq, a = _logits(qwen2_int8, ids, fed, torch.bfloat16, expert_budget=budget,
                         compile=False, overlap="off")  # fmt: skip
        ovl, b = _logits(qwen2_int8, ids, fed, torch.bfloat16, expert_budget=budget,
                         compile=False, overlap="on")  # fmt: skip
        assert torch.equal(a, b), budget
        assert seq.cache.counters == ovl.cache.counters, budget
        assert (seq.usage.array == ovl.usage.array).all()


def _reference_predictions(ref, ids, fed) -> tuple[int, int]:
    """(routed, routed and predicted) over the decode steps, from transformers' model:
    layer i+1's own post-attention norm and router on layer i's output."""
    routers = [m for m in ref.modules() if type(m).__name__.lower().endswith("topkrouter")]
    layers = list(ref.model.layers)
    moe_of = {}  # decoder index -> MoE index
    for j, layer in enumerate(layers):
        for k, router in enumerate(routers):
            if any(m is router for m in layer.modules()):
                moe_of[j] = k
    chosen: dict[int, set[int]] = {}
    hooks = [
        r.register_forward_hook(lambda m, a, out, k=k: chosen.__setitem__(k, set(out[2].flatten().tolist())))
        for k, r in enumerate(routers)
    ]  # fmt: skip
    routed = hit = 0
    try:
        with torch.no_grad():
            past = ref(ids, use_cache=True).past_key_values
            for token in fed:
                out = ref(torch.tensor([[token]]), cache=past, use_cache=True,
                          output_hidden_states=True)  # fmt: skip
                past = out.past_key_values
                seen = dict(chosen)  # what the routers chose in this step
                for j, k in moe_of.items():
                    if j == 0:
                        continue
                    h = layers[j].post_attention_layernorm(out.hidden_states[j][0])  # layer j-1's
                    predicted = set(routers[k](h)[2].flatten().tolist())
                    routed += len(seen[k])
                    hit += len(seen[k] & predicted)
    finally:
        for h in hooks:
            h.remove()
    return routed, hit


def test_prediction_counts_match_an_independent_prediction(qwen2):  # noqa: F811
    folder, ref, ids = qwen2
    _, _, fed = run_reference(ref, ids, steps=DECODE)
    routed, hit = _reference_predictions(ref, ids, fed)
    assert routed > 0
    for budget in (0.5, 1.0):  # predictions are counted whatever the cache holds
        model = load_model(folder, expert_budget=budget, prefetch="next_layer")
        run_ours(model, ids, fed)
        p = model.cache.prefetch_counters
        assert (p.routed, p.routed_predicted) == (routed, hit), budget
        assert p.predicted == routed  # K predictions per predicted layer and step
        print(f"\nbudget {budget:.0%}: prediction hit rate {p.prediction_hit_rate:.2f}")


def test_prefetch_turns_misses_into_hits(qwen2):  # noqa: F811
    """Into free slots (budget 100%, nothing preloaded) a guess evicts nothing, so every
    right guess for an expert not yet resident is a miss turned into a hit; under a tight
    budget a wrong guess can cost a hit (printed, measured in bench_prefetch.py)."""
    folder, ref, ids = qwen2
    ids = ids[:, :2]  # a short prompt: decode still meets experts the prefill did not use
    _, _, fed = run_reference(ref, ids, steps=DECODE)
    for budget in (1.0, 0.5):
        runs = {}
        for mode in ("off", "next_layer"):
            model = load_model(folder, expert_budget=budget, on_miss="move", prefetch=mode,
                               prefetch_copier="sync", preload=False)  # fmt: skip
            run_ours(model, ids, fed)
            runs[mode] = model.cache
        off, on = runs["off"].counters, runs["next_layer"].counters
        p = runs["next_layer"].prefetch_counters
        assert off.hits + off.misses == on.hits + on.misses  # the same routed uses
        # every byte moved is a miss moved in or a prefetch (on_miss=move, from the hub folder)
        assert on.bytes_moved == (on.misses + p.prefetched) * runs["off"].row_bytes
        if budget == 1.0:
            assert on.hits > off.hits and p.prefetched > 0
            assert not runs["next_layer"].inflight  # the sync copier leaves nothing running
        print(f"\nbudget {budget:.0%}: hit rate {off.hits / (off.hits + off.misses):.2f} -> "
              f"{on.hits / (on.hits + on.misses):.2f}, {p.prefetched} prefetched")  # fmt: skip


def test_unknown_prefetch_and_overlap_values_are_refused(qwen2):  # noqa: F811
    folder = qwen2[0]
    with pytest.raises(ItamaeError, match="prefetch"):
        load(folder, prefetch="next_two_layers", device="cpu")
    with pytest.raises(ItamaeError, match="overlap"):
        load(folder, overlap="sometimes", device="cpu")


def test_bench_command_reports_the_prediction(qwen2):  # noqa: F811
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--model", str(qwen2[0]), "--engine", "torch",
         "--prompt-tokens", "8", "--gen-tokens", "6", "--expert-budget", "0.5",
         "--prefetch", "next_layer", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert 0 < result["prefetch_prediction_hit_rate"] <= 1
    assert result["prefetch_predicted"] > 0
