"""The torch engine's CUDA paths: the GPU fast tier, next-layer prefetch through the side
stream (prefetch.CudaCopier), and decode with the missed experts computed on the CPU while
the GPU runs the resident ones (overlap.py). Skipped without a CUDA GPU;
tests/benchmarks/torch_gpu_check.sh runs them on a GPU machine.

On CUDA an expert computed on the GPU and one computed on the CPU are different kernels, so
bits are compared only between runs that place every expert use alike: prefetch on/off with
every miss moved in (on_miss=move, so all experts run from GPU slots), and overlapped vs in
turn (the same placement decisions, only the order of launches differs). Mixed placements
are compared with the CPU engine within bf16's rounding.
"""

from __future__ import annotations

import pytest
import torch

from converters.formats.torch_writer import convert_to_torch
from engine.torch.models import model_class
from engine.torch.prefetch import CudaCopier
from engine.torch.transformer import PlacementOptions
from engine.torch.weights import open_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
BUDGETS = (0.10, 0.50, 1.00)
PROMPT = torch.arange(3, 35)[None]  # 32 ids inside every fixture's vocabulary
FED = [5, 9, 2, 7, 11, 4, 8, 6]


@pytest.fixture(scope="module")
def int8_model(hf_checkpoint, tmp_path_factory):
    folder = hf_checkpoint("qwen2_moe")  # shared expert + gate, 8 experts top-4, 3 MoE layers
    return convert_to_torch(folder, tmp_path_factory.mktemp("gpu") / "int8", "int8")


def build(folder, device="cuda", **placement):
    weights = open_weights(folder, torch.bfloat16, torch.device(device))
    cls = model_class(weights.config["model_type"])
    return cls(cls.Args.from_dict(weights.config), weights, PlacementOptions(**placement))


def logits(model, prompt=PROMPT, fed=FED) -> torch.Tensor:
    kv = model.new_cache()
    out = [model.forward(prompt, kv, all_logits=True)[0]]
    out += [model.forward(torch.tensor([[t]]), kv)[0] for t in fed]
    model.cache.join_all()
    torch.cuda.synchronize()
    return torch.cat(out).float().cpu()


def test_the_fast_tier_is_gpu_memory_and_copies_use_the_side_stream(int8_model):
    model = build(int8_model, expert_budget=0.5, prefetch="next_layer")
    assert model.cache.buffer.device.type == "cuda"
    assert isinstance(model.cache.copier, CudaCopier)
    assert model.overlap is not None  # "auto" is on with CUDA
    logits(model)
    assert model.cache.prefetch_counters.prefetched > 0 and not model.cache.inflight


@pytest.mark.parametrize("budget", BUDGETS)
def test_prefetch_on_cuda_keeps_the_logits(int8_model, budget):
    off = logits(build(int8_model, expert_budget=budget, on_miss="move"))
    model = build(int8_model, expert_budget=budget, on_miss="move", prefetch="next_layer")
    assert torch.equal(logits(model), off)
    if budget < 1.0:
        assert model.cache.prefetch_counters.prefetched > 0


def test_prefetch_on_cuda_turns_misses_into_hits(int8_model):
    runs = {}
    for mode in ("off", "next_layer"):
        model = build(int8_model, expert_budget=1.0, on_miss="move", preload=False, prefetch=mode)
        logits(model, PROMPT[:, :2])  # a short prompt: decode meets experts not yet resident
        runs[mode] = model.cache.counters
    assert runs["next_layer"].hits > runs["off"].hits


@pytest.mark.parametrize("budget", BUDGETS)
def test_overlapped_decode_on_cuda_is_the_sequential_one(int8_model, budget):
    seq = build(int8_model, expert_budget=budget, on_miss="compute", overlap="off")
    ovl = build(int8_model, expert_budget=budget, on_miss="compute", overlap="on")
    assert torch.equal(logits(seq), logits(ovl))
    assert seq.cache.counters == ovl.cache.counters
    if budget < 1.0:
        assert ovl.cache.counters.computed_in_place > 0  # some experts ran on the CPU


@pytest.mark.parametrize("budget", (0.10, 0.50))
def test_gpu_hybrid_agrees_with_the_cpu_engine(int8_model, budget):
    model = build(int8_model, "cpu", expert_budget=1.0, compile=False)
    kv = model.new_cache()
    cpu = [model.forward(PROMPT, kv, all_logits=True)[0]]
    cpu += [model.forward(torch.tensor([[t]]), kv)[0] for t in FED]
    logits_cpu = torch.cat(cpu).float()
    gpu = logits(build(int8_model, expert_budget=budget, prefetch="next_layer"))
    err = (gpu - logits_cpu).abs().max() / logits_cpu.abs().max()
    assert err < 2e-2, err  # bf16 activations, different kernels on the two devices
