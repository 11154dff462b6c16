"""DeepSeek-V4 in the torch engine against transformers fp32 (its models/deepseek_v4).

Two tiny checkpoints laid out as DeepSeek publishes V4-Flash (tests/fixtures/deepseek_v4.py:
DeepSeek's own tensor names, FP8 projections with e8m0 block scales, FP4 routed experts):
the published fixture, and a variant whose HCA layer compresses every 8 tokens instead of
128 (`SMALL_COMPRESSION`), so that on a 32-token prompt (twice the 16-token sliding window) and
16 decode steps every layer kind runs on compressed entries: CSA's 8 to 12 entries of which
the indexer keeps 4, HCA's 4 to 6.

Checked: the published FP8 / FP4 tensors load as exactly the reference's weights; logits on
the prefill and at each decode step within 1e-4 relative; expert counts equal to
transformers' routers (hash and learned); switching off the indexer, the compressed entries
or the hash table breaks the match (so the match tests what it claims); greedy generation
identical; a three-turn chat, each turn resuming from the cache's turn checkpoint (window,
compressed entries, pending tokens), gives what a fresh engine computes, as does a prompt
that diverges inside the cached one; bf16 is as close to fp32 as transformers' own bf16;
the torch format refuses V4 with what to do instead, and both ways it names work.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

import engine
from converters.formats.e8m0_scales import ScaledCheckpoint
from engine.types import GenerationRequest, Message, SamplingParams
from tests.fixtures import deepseek_v4
from tests.fixtures.checkpoints import SEED
from tests.fixtures.tokenizer import write_tokenizer
from tests.test_torch_parity import (
    DECODE,
    PREFILL,
    TOL,
    load_model,
    prompt_ids,
    rel_err,
    run_ours,
    run_reference,
)

CSA, HCA = "compressed_sparse_attention", "heavily_compressed_attention"


@pytest.fixture(scope="module")
def published(hf_checkpoint, tmp_path_factory):
    """(the published fixture's folder, transformers' fp32 model of its weights)."""
    dest = tmp_path_factory.mktemp("v4_reference")
    return hf_checkpoint("deepseek_v4"), deepseek_v4.build(dest, write_tokenizer(dest), SEED)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The SMALL_COMPRESSION variant, written as published, and transformers' model of it."""
    dest = tmp_path_factory.mktemp("v4_small")
    ref = deepseek_v4.build(dest, write_tokenizer(dest), SEED, deepseek_v4.SMALL_COMPRESSION)
    return dest, ref


class RouterCounts:
    """Experts chosen per MoE layer by transformers' routers, hash and learned alike."""

    def __init__(self, ref):
        layers = ref.model.layers
        self.counts = torch.zeros(len(layers), ref.config.n_routed_experts, dtype=torch.int64)
        for i, layer in enumerate(layers):
            layer.mlp.gate.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, args, output):
            self.counts[i] += torch.bincount(output[2].flatten(), minlength=self.counts.shape[1])

        return hook


@pytest.fixture(scope="module")
def ids(hf_checkpoint) -> torch.Tensor:
    """The 32-token prompt (the variant has the same tokenizer; transformers' AutoTokenizer
    reads config.json, whose HCA ratio 8 its DeepseekV4Config does not fold)."""
    return prompt_ids(hf_checkpoint("deepseek_v4"))


@pytest.fixture(scope="module")
def small_reference(small, ids):
    ref = small[1]
    counter = RouterCounts(ref)
    return ids, run_reference(ref, ids), counter.counts


def test_the_prompt_reaches_every_kind_of_compression(small):
    args = load_model(small[0]).args
    assert args.sliding_window < PREFILL
    assert {kind for kind, _ in args.attention} == {"sliding_attention", CSA, HCA}
    for kind, ratio in args.attention:
        if kind == CSA:  # more complete windows than the indexer keeps
            assert PREFILL // ratio > args.index_topk
        if kind == HCA:
            assert PREFILL // ratio >= 2
    assert any(args.hashed) and not all(args.hashed)


def test_published_fp8_and_fp4_tensors_load_as_the_reference_weights(published):
    folder, ref = published
    ckpt, state = ScaledCheckpoint(folder), ref.state_dict()
    inter = ref.config.moe_intermediate_size
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert f.get_slice("layers.1.attn.wq_a.weight").get_dtype() == "F8_E4M3"
        assert f.get_slice("layers.1.ffn.experts.3.w1.weight").get_dtype() == "I8"
    pairs = {
        "layers.1.attn.wq_a.weight": state["model.layers.1.self_attn.q_a_proj.weight"],
        "layers.2.attn.wo_b.weight": state["model.layers.2.self_attn.o_b_proj.weight"],
        "head.weight": state["lm_head.weight"],
        "layers.3.ffn.shared_experts.w2.weight": state[
            "model.layers.3.mlp.shared_experts.down_proj.weight"
        ],
        "layers.1.ffn.experts.3.w1.weight": state["model.layers.1.mlp.experts.gate_up_proj"][
            3, :inter
        ],
        "layers.1.ffn.experts.3.w3.weight": state["model.layers.1.mlp.experts.gate_up_proj"][
            3, inter:
        ],
        "layers.0.ffn.experts.15.w2.weight": state["model.layers.0.mlp.experts.down_proj"][15],
    }
    for name, expected in pairs.items():
        assert torch.equal(ckpt.get(name), expected), name


@pytest.mark.parametrize("variant", ["small", "published"])
def test_logits_and_routing_match_transformers_fp32(variant, request, ids):
    folder, ref = request.getfixturevalue(variant)
    counter = RouterCounts(ref)
    ref_prefill, ref_steps, fed = run_reference(ref, ids)
    model = load_model(folder)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    assert model.usage.counts.tolist() == counter.counts.tolist()
    assert int(model.usage.counts.sum()) == (
        (PREFILL + DECODE) * model.args.experts_per_token * len(model.moe_layers)
    )


def _error(model, ids, reference) -> float:
    ref_prefill, ref_steps, fed = reference
    prefill, steps = run_ours(model, ids, fed)
    errors = [rel_err(o, t) for o, t in zip(steps, ref_steps, strict=True)]
    return max(rel_err(prefill, ref_prefill), *errors)


def test_indexer_compression_and_hash_table_each_decide_the_logits(small, small_reference):
    ids, reference, _ = small_reference
    model = load_model(small[0])
    assert _error(model, ids, reference) < TOL
    dense = load_model(small[0])  # CSA reading every complete window
    for layer in dense.layers:
        if layer.attn.indexer is not None:
            layer.attn.indexer.top_k = 1 << 20
    assert _error(dense, ids, reference) > 10 * TOL
    window_only = load_model(small[0])  # no compressed entries at all
    for layer in window_only.layers:
        layer.attn.compressor = layer.attn.indexer = None
    assert _error(window_only, ids, reference) > 10 * TOL
    learned = load_model(small[0])  # hash layers routed by their scores instead
    for layer in learned.layers:
        layer.hash_router = None
    assert _error(learned, ids, reference) > 10 * TOL


def test_greedy_generation_identical(small):
    folder, ref = small
    tok = engine.load(folder, engine="torch", dtype="float32")
    prompt = "板前は寿司を握る。 The chef slices the tuna while the apprentice washes the rice."
    try:
        ids = tok.tokenize(prompt)
        assert len(ids) > 2 * tok.model.args.sliding_window
        with torch.no_grad():
            expected = ref.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16)
        expected = expected[0, len(ids) :].tolist()
        if expected and expected[-1] in tok.generator.text.eos_ids:
            expected = expected[:-1]  # transformers returns the EOS it stopped at
        request = GenerationRequest(
            prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=16)
        )
        final = list(tok.stream(request))[-1]
    finally:
        tok.close()
    assert final.prompt_token_ids == ids
    assert final.token_ids == expected


TURNS = ["Hello! おすすめは何ですか？", "Then tuna, please.", "And the rice?"]


def _reply(backend, messages) -> tuple[str, list[int], list[int]]:
    req = GenerationRequest(
        messages=[Message(**m) for m in messages],
        sampling=SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
    )
    events = list(backend.stream(req))
    final = events[-1]
    assert final.finish_reason in ("length", "stop"), final.error
    return "".join(e.text for e in events[:-1]), final.prompt_token_ids, final.token_ids


def test_three_turn_chat_equals_the_recomputed_conversation(small):
    folder = small[0]
    chat = engine.load(folder, engine="torch", dtype="float32")
    gen = chat.generator
    messages: list[dict] = []
    try:
        for turn in TURNS:
            messages.append({"role": "user", "content": turn})
            request = GenerationRequest(messages=[Message(**m) for m in messages])
            ids = gen.prompt_ids(request)
            cached = len(gen.cached_ids)
            reused, ran = gen._prefill(ids, None, None)
            fresh = gen.model.forward(torch.tensor([ids]), gen.model.new_cache())[0, -1]
            assert rel_err(reused, fresh) < 1e-5
            if cached:  # resumed past the window and some full compressed windows
                assert len(ids) - ran > gen.model.args.sliding_window
            text, prompt, tokens = _reply(chat, messages)
            other = engine.load(folder, engine="torch", dtype="float32")
            try:
                assert _reply(other, messages)[1:] == (prompt, tokens)
            finally:
                other.close()
            messages.append({"role": "assistant", "content": text})
    finally:
        chat.close()


def test_a_prompt_diverging_inside_the_cache_is_recomputed_exactly(small, ids):
    model = load_model(small[0])
    ids = ids[0].tolist()
    cache = model.new_cache()
    model.forward(torch.tensor([ids[:20]]), cache)
    cache.checkpoint()  # a turn boundary at 20 tokens
    model.forward(torch.tensor([ids[20:]]), cache)
    changed = ids[:27] + [(ids[27] + 1) % 1000] + ids[28:]
    kept = cache.truncate(27)  # inside windows of every ratio: back to the checkpoint
    assert kept == 20
    resumed = model.forward(torch.tensor([changed[kept:]]), cache)[0, -1]
    fresh = model.forward(torch.tensor([changed]), model.new_cache())[0, -1]
    assert rel_err(resumed, fresh) < 1e-5


def _transformers_bf16(ref):
    """transformers' model in bf16 as from_pretrained(dtype=bfloat16) makes it: the
    modules and parameters V4 keeps in float32 (`_keep_in_fp32_modules_strict`) stay so."""
    half = copy.deepcopy(ref).to(torch.bfloat16)
    kept = ref._keep_in_fp32_modules_strict
    for name, module in half.named_modules():
        if set(name.split(".")) & set(kept):
            module.float()
    for name, param in half.named_parameters():
        if name.split(".")[-1] in kept:
            param.data = param.data.float()
    return half


def test_bfloat16_is_as_close_to_fp32_as_transformers_bf16(small, ids):
    # the tiny random model is sensitive to rounding (discrete top-k choices flip): the
    # measure is transformers' own bf16 run, not a fixed tolerance
    ref = small[1]
    with torch.no_grad():
        full = ref(ids).logits[0]
        theirs = _transformers_bf16(ref)(ids).logits[0].float()
    model = load_model(small[0], dtype=torch.bfloat16)
    ours = model.forward(ids, model.new_cache(), all_logits=True)[0]
    assert ours.dtype == torch.float32
    assert rel_err(ours, full) <= rel_err(theirs, full)
    top1 = [(x.argmax(-1) == full.argmax(-1)).float().mean() for x in (ours, theirs)]
    assert top1[0] >= top1[1]


def test_the_torch_format_refuses_v4_and_says_what_to_do(published, tmp_path):
    # its experts are not under a Hugging Face name the torch format lays out: the folder
    # runs as it is instead (the misleading 'no head.weight_scale_inv' was the old error),
    # and both ways the hint gives work
    import re
    import shlex

    from app.cli import _command_modules, build_parser, main
    from converters.conversion.convert import convert
    from converters.core.errors import UnsupportedArchitecture
    from engine.loader import detect

    with pytest.raises(UnsupportedArchitecture) as refused:
        convert(published[0], tmp_path / "v4-torch", fmt="torch")
    assert not (tmp_path / "v4-torch").exists()
    run, to_gguf = [shlex.split(c) for c in re.findall(r"`itamae ([^`]+)`", str(refused.value))]
    assert detect(build_parser(_command_modules()).parse_args(run).model).engine == "torch"
    assert to_gguf[-1] == "OUT.gguf"
    assert main([*to_gguf[:-1], str(tmp_path / "v4.gguf")]) == 0
    assert (tmp_path / "v4.gguf").is_file()
