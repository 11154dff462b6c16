"""The torch engine against Hugging Face transformers (fp32) on every architecture.

Checked per architecture: logits on a 32-token prefill and at each of 16 decode steps within
1e-4 relative (max |ours - ref| / max |ref|); greedy generation identical token by token;
expert usage counts equal to those of transformers' own routers (captured with forward
hooks). The FP8 fixture is compared with its dequantized float32 reference.
"""

from __future__ import annotations

import pytest
import torch

import engine
from engine.torch.models import model_class
from engine.torch.transformer import PlacementOptions
from engine.torch.weights import open_weights
from engine.types import GenerationRequest, SamplingParams
from tests.fixtures.checkpoints import ARCHS
from tests.fixtures.reference import reference_model, reference_tokenizer

TOL = 1e-4
PREFILL, DECODE = 32, 16
MOE_ARCHS = tuple(a for a in ARCHS if a != "llama")


def load_model(folder, dtype=torch.float32, expert_quant=None, **placement):
    """The engine's model object (no tokenizer), as backend.load builds it."""
    weights = open_weights(folder, dtype, torch.device("cpu"))
    weights.expert_quant = expert_quant
    cls = model_class(weights.config["model_type"])
    return cls(cls.Args.from_dict(weights.config), weights, PlacementOptions(**placement))


def prompt_ids(folder, n=PREFILL) -> torch.Tensor:
    tok = reference_tokenizer(folder)
    text = (
        "The sushi chef slices fish while the apprentice washes rice. "
        "板前は魚を切り、見習いは米を研ぐ。 Each order goes to the right specialist."
    )
    ids = tok(text).input_ids
    assert len(ids) >= n, len(ids)
    return torch.tensor([ids[:n]])


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def run_reference(ref, ids: torch.Tensor, steps: int = DECODE):
    """(prefill logits [T, V], [decode logits [V]] per step, tokens fed at each step)."""
    with torch.no_grad():
        out = ref(ids, use_cache=True)
        logits, past = out.logits[0], out.past_key_values
        fed, steps_logits = [], []
        token = logits[-1].argmax().view(1, 1)
        for _ in range(steps):
            fed.append(int(token))
            out = ref(token, cache=past, use_cache=True)
            past = out.past_key_values
            steps_logits.append(out.logits[0, -1])
            token = out.logits[0, -1].argmax().view(1, 1)
    return logits, steps_logits, fed


def run_ours(model, ids: torch.Tensor, fed: list[int]):
    cache = model.new_cache()
    prefill = model.forward(ids, cache, all_logits=True)[0]
    steps = [model.forward(torch.tensor([[t]]), cache)[0, -1] for t in fed]
    return prefill, steps


def assert_grouped_agrees_with_per_expert(folder, is_grouped) -> None:
    """bf16 decode with the K experts in grouped kernel calls (compile on) against one call
    per expert and projection (compile off), the same tokens fed: the per-expert path rounds
    to bf16 between the projections, so logits agree within that and the choice agrees
    wherever the best token leads clearly. Compared on the steps where both routed every
    layer to the same experts: a near-tie in a router can flip on that rounding, and one
    other expert moves the logits by more than rounding (seen on the int4 fixture once the
    int8 attention ran through int8_kernel.py). `is_grouped(fused)` checks the kernel."""
    ids = prompt_ids(folder, 8)
    fed = [5, 7, 11, 13, 17, 19, 23, 29]
    logits, routes = [], []
    for compile in (True, False):
        model = load_model(folder, torch.bfloat16, compile=compile)
        assert (model.fused is not None and is_grouped(model.fused)) == compile
        model.usage.trace = []
        _, steps = run_ours(model, ids, fed)
        logits.append(torch.stack(steps).float())
        per_step = len(model.moe_layers)  # one record per MoE layer and forward pass
        trace = model.usage.trace[per_step:]  # the decode steps (prefill first)
        routes.append([trace[i : i + per_step] for i in range(0, len(trace), per_step)])
    same = torch.tensor([a == b for a, b in zip(*routes, strict=True)])
    assert same.sum() >= len(fed) - 2, same  # flips are rare: most steps compare
    grouped, per_expert = logits[0][same], logits[1][same]
    bound = 0.03 * per_expert.abs().max()
    assert (grouped - per_expert).abs().max() < bound
    top2 = per_expert.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert clear.any()
    assert torch.equal(grouped.argmax(-1)[clear], per_expert.argmax(-1)[clear])


class RouterCounts:
    """Counts of routed experts per MoE layer, from transformers' router modules."""

    def __init__(self, ref, n_experts: int):
        routers = [m for m in ref.modules() if type(m).__name__.lower().endswith("topkrouter")]
        assert routers, "no router modules found"
        self.counts = torch.zeros(len(routers), n_experts, dtype=torch.int64)
        self.order: list[tuple[int, list[int]]] = []  # (layer, distinct experts) per call
        for i, router in enumerate(routers):
            router.register_forward_hook(self._hook(i))

    def _hook(self, layer):
        def hook(module, args, output):
            experts = output[2].flatten()
            self.counts[layer] += torch.bincount(experts, minlength=self.counts.shape[1])
            self.order.append((layer, sorted(set(experts.tolist()))))

        return hook


def assert_expert_rows_same_from_slot_and_file(folder) -> None:
    """bf16, every expert resident: the grouped kernel gives an expert's output the same bits
    from the fast tier's slots as from the memory-mapped file, alone or beside others (what
    keeps decode placement-independent)."""
    model = load_model(folder, torch.bfloat16, expert_budget=1.0, compile=True)
    cache, fused = model.cache, model.fused
    x = torch.randn(model.args.hidden_size).bfloat16()
    experts = [1, 4, 6]
    slots = torch.tensor([cache.slot_of[(2, e)] for e in experts])
    from_slots = fused(x, cache.fast_views(2), slots)
    views, idx = cache.slow.stacked(2, experts)
    from_file = fused(x, views, idx)
    assert torch.equal(from_slots, from_file)
    assert torch.equal(fused(x, views, idx[1:2])[0], from_file[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_fp32(hf_checkpoint, arch):
    folder = hf_checkpoint(arch)
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    model = load_model(folder)
    counter = RouterCounts(ref, model.args.n_experts) if arch != "llama" else None
    ref_prefill, ref_steps, fed = run_reference(ref, ids)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    if counter is not None:
        # the same tokens went through both: every routed expert was chosen as often
        assert model.usage.counts.tolist() == counter.counts.tolist()
        assert int(model.usage.counts.sum()) == (
            PREFILL + DECODE
        ) * model.args.experts_per_token * len(model.moe_layers)


def test_fp8_checkpoint_matches_its_dequantized_reference(hf_checkpoint):
    folder = hf_checkpoint("deepseek_v3_fp8")
    ref = reference_model(folder)  # transformers on the float32 dequantized copy
    ids = prompt_ids(folder)
    ref_prefill, ref_steps, fed = run_reference(ref, ids, steps=4)
    prefill, steps = run_ours(load_model(folder), ids, fed)  # ours dequantizes on load
    assert rel_err(prefill, ref_prefill) < TOL
    for ours, theirs in zip(steps, ref_steps, strict=True):
        assert rel_err(ours, theirs) < TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_identical(hf_checkpoint, arch):
    folder = hf_checkpoint(arch)
    ref, tok = reference_model(folder), reference_tokenizer(folder)
    prompt = "板前は寿司を握る。 The chef"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = ref.generate(ids, do_sample=False, max_new_tokens=16)[0, ids.shape[1] :].tolist()
    backend = engine.load(folder, engine="torch")
    if expected and expected[-1] in backend.generator.text.eos_ids:
        expected = expected[
            :-1
        ]  # transformers returns the EOS it stopped at; we report text tokens
    request = GenerationRequest(
        prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=16)
    )
    final = list(backend.stream(request))[-1]
    assert final.prompt_token_ids == ids[0].tolist()
    assert final.token_ids == expected
    assert final.finish_reason == ("length" if len(expected) == 16 else "stop")
