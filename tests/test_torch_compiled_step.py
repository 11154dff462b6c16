"""The compiled decode step (engine/torch/compiled_step.py) against the op-by-op forward pass.

The same model both ways: the compiled step runs each decoder layer as one Inductor graph in
float32 with FBGEMM's int8 products and the MoE block's expert path as opaque operators.
Checked: float32 (both paths the same math up to summation order) gives the same greedy
tokens and expert counts, whatever the expert budget; bf16 (the app's dtype, where the op-by-op
path rounds activations to bf16 and the compiled one keeps float32) gives logits within bf16
rounding and the same choice wherever the best token leads clearly; the step really ran, and
one graph serves every layer (the cache length is dynamic: no recompiles as it grows).
"""

from __future__ import annotations

import pytest
import torch

import engine
from converters.formats.torch_writer import convert_to_torch
from engine.types import FinalEvent, GenerationRequest, SamplingParams
from tests.test_torch_parity import load_model, prompt_ids, run_ours

PROMPT = "The sushi chef 板前 prepares"
TOKENS = 12


@pytest.fixture(scope="module")
def int8_model(hf_checkpoint, tmp_path_factory):
    folder = hf_checkpoint("qwen2_moe")  # shared expert + gate, 8 experts top-4, qkv bias
    return convert_to_torch(folder, tmp_path_factory.mktemp("step") / "int8", "int8")


def _generate(backend) -> FinalEvent:
    req = GenerationRequest(
        prompt=PROMPT, sampling=SamplingParams(temperature=0.0, max_tokens=TOKENS, ignore_eos=True)
    )
    final = [e for e in backend.stream(req) if isinstance(e, FinalEvent)][0]
    assert final.finish_reason == "length", final.error
    return final


class Counting:
    """Wraps a DecodeStep and counts the steps it ran."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, *args):
        self.calls += 1
        return self.step(*args)


@pytest.mark.parametrize("budget", [1.0, 0.25])
def test_compiled_step_and_op_by_op_give_the_same_tokens(int8_model, budget):
    options = {"engine": "torch", "expert_budget": budget, "dtype": "float32"}
    plain = engine.load(int8_model, compile=False, **options)
    compiled = engine.load(int8_model, compile=True, **options)
    assert plain.model.step is None
    assert compiled.model.step is not None and compiled.model.step.failed is None
    counting = compiled.model.step = Counting(compiled.model.step)
    a, b = _generate(plain), _generate(compiled)
    assert counting.calls == TOKENS - 1  # every decode forward pass after the prefill
    assert b.token_ids == a.token_ids
    assert b.stats.expert_counts == a.stats.expert_counts  # the step records its routing


def test_compiled_step_in_bf16_within_rounding(int8_model):
    """bf16 as the app runs it: the compiled step (float32 activations) is about as close to
    the float32 forward pass as the op-by-op bf16 one (the median step's error; a single step
    can part further where a near-tie tips one way: one token of this fixture does, by 0.25),
    and chooses the same tokens wherever the float32 pass's best token leads clearly."""
    ids = prompt_ids(int8_model, 8)
    fed = [5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    logits = {}
    for label, dtype, compile in (("float32", torch.float32, False),
                                  ("bf16", torch.bfloat16, False),
                                  ("bf16 compiled", torch.bfloat16, True)):  # fmt: skip
        model = load_model(int8_model, dtype, compile=compile)
        assert (model.step is not None) == compile
        _, steps = run_ours(model, ids, fed)
        logits[label] = torch.stack(steps).float()
    assert_compiled_within_rounding(logits)


def assert_compiled_within_rounding(logits: dict[str, torch.Tensor]) -> None:
    """logits "float32", "bf16" (op by op) and "bf16 compiled", [steps, V] each: the
    compiled step's median error from float32 is at most 1.5x op by op's, and it picks
    float32's token wherever that one leads by more than twice op by op's error."""
    ref = logits["float32"]
    plain_err = (logits["bf16"] - ref).abs().amax(-1).median()
    compiled_err = (logits["bf16 compiled"] - ref).abs().amax(-1).median()
    assert compiled_err <= 1.5 * plain_err, (compiled_err, plain_err)
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * plain_err
    assert clear.any()
    assert torch.equal(logits["bf16 compiled"].argmax(-1)[clear], ref.argmax(-1)[clear])


def test_one_graph_for_every_layer_and_length(int8_model):
    from torch._dynamo.utils import counters

    model = load_model(int8_model, torch.bfloat16, compile=True)
    assert model.step is not None
    before = dict(counters["stats"])
    kv = model.new_cache()
    model.forward(prompt_ids(int8_model, 8), kv)
    for t in range(300):  # past the KV cache's growth step (256 positions)
        model.forward(torch.tensor([[t % 50]]), kv)
    assert counters["stats"].get("unique_graphs", 0) == before.get("unique_graphs", 0)


def test_decoding_compiles_nothing_after_load(int8_model):
    """Everything decode runs was compiled at load, in the mode decode runs it (inference
    mode): a kernel compiled again on the first decoded token costs its time inside the
    decode speed `itamae bench` reports. The step (experts gathered in its graph) and the
    expert kernel's own path (a one-token forward op by op, as with ITAMAE_COMPILE_STEP=0)
    run in turn; neither may recompile (the block path marks the views it passes dynamic,
    which must not reach the step's graph). Broken on purpose, each cause adds a graph."""
    from torch._dynamo.utils import counters

    model = load_model(int8_model, torch.bfloat16, compile=True)
    assert model.fused is not None and model.step is not None
    kv = model.new_cache()
    model.forward(prompt_ids(int8_model, 8), kv)
    before = counters["stats"].get("unique_graphs", 0)
    for t in range(4):
        model.forward(torch.tensor([[t + 3]]), kv)
        model.forward(torch.tensor([[t + 9]]), kv, compiled=False)
    assert counters["stats"].get("unique_graphs", 0) == before


def test_step_runs_its_graphs_without_dynamo(int8_model):
    """The step calls its graphs' compiled code directly (compiled_step.Graphs): no Dynamo
    cache lookup (its guards over every input) on any of a decode step's calls, and a new
    KV cache (new buffers: the guards are checked again) still finds the graphs compiled."""
    from torch.profiler import profile

    model = load_model(int8_model, torch.bfloat16, compile=True)
    assert model.step is not None
    for _ in range(2):  # the second with buffers the step has not seen
        kv = model.new_cache()
        model.forward(prompt_ids(int8_model, 8), kv)
        with profile() as prof:
            model.forward(torch.tensor([[3]]), kv)
        names = {e.name for e in prof.events()}
        assert "TorchDynamo Cache Lookup" not in names
        assert any(name.startswith("## Call CompiledFxGraph") for name in names)
