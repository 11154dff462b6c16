"""Qwen3-Next (Gated DeltaNet + gated attention + MoE) against references nobody here wrote.

- Itamae's GGUF against the file llama.cpp's own converter writes from the same checkpoint
  (with --no-mtp, which a transformers-saved checkpoint needs there and Itamae does not):
  tensor names, shapes and data, metadata keys.
- llama.cpp's F32 logits on Itamae's GGUF within 1e-4 of transformers fp32, greedy tokens equal.
- The torch engine within 1e-4 of transformers fp32 on a 32-token prefill and 16 decode
  steps (chunked delta rule, then the recurrent form), expert counts equal to transformers'
  routers, greedy generation identical.
- A three-turn chat through the torch engine's generator (prefix reuse back to the last
  state checkpoint) gives the logits of the conversation recomputed from nothing.
- `itamae inspect --json`: experts, per token, shared experts, MoE and linear-attention layers,
  active parameters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from app.cli import main
from converters.conversion.convert import convert
from engine.torch.backend import load as load_torch
from engine.types import GenerationRequest, Message, SamplingParams
from tests.convert_helpers import llama_cpp_logits, relative_error, transformers_logits
from tests.fixtures.llamacpp_reference import reference_pair
from tests.fixtures.reference import reference_model, reference_tokenizer
from tests.test_torch_parity import (
    DECODE,
    PREFILL,
    TOL,
    RouterCounts,
    load_model,
    prompt_ids,
    rel_err,
    run_ours,
    run_reference,
)

llama_cpp = pytest.importorskip("llama_cpp")
ARCH = "qwen3_next"
LLAMA_CPP_PROMPT = [50256] + list(range(40, 71))  # GPT-2's <|endoftext|> then 31 tokens


@pytest.fixture(scope="module")
def ours_f32(hf_checkpoint, tmp_path_factory):
    dest = tmp_path_factory.mktemp("qwen3_next") / "f32.gguf"
    convert(hf_checkpoint(ARCH), dest, "F32")
    return dest


@pytest.mark.slow  # llama.cpp's converter: ~20 s the first time, then cached
def test_gguf_equals_llama_cpp_converters(hf_checkpoint, tmp_path):
    folder, theirs = reference_pair(hf_checkpoint(ARCH), "f32", flags=("--no-mtp",))
    ours = tmp_path / "itamae.gguf"
    convert(folder, ours, "F32")
    a, b = GGUFReader(ours), GGUFReader(theirs)
    mine, their = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(mine) == set(their)
    for name, t in their.items():
        assert list(mine[name].shape) == list(t.shape), name
        assert np.array_equal(mine[name].data, t.data), name

    def arch_keys(reader):
        return {k for k in reader.fields if k.startswith("qwen3next.")}

    # Itamae also writes the vocabulary size, as for every family
    assert arch_keys(b) == arch_keys(a) - {"qwen3next.vocab_size"}
    for key in arch_keys(b) - {"qwen3next.full_attention_interval"}:
        assert a.fields[key].contents() == b.fields[key].contents(), key
    # llama.cpp reads the config through transformers, which consumes the interval into
    # layer_types, and then writes its default 4; its loader reads recurrent_layers first.
    assert a.fields["qwen3next.full_attention_interval"].contents() == 2


def test_llama_cpp_logits_and_greedy_match_transformers(hf_checkpoint, ours_f32):
    folder = hf_checkpoint(ARCH)
    got, want = llama_cpp_logits(ours_f32), transformers_logits(folder)
    assert relative_error(got, want) <= 1e-4
    ids = [0] + list(range(40, 50))
    with torch.no_grad():
        expected = reference_model(folder).generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=16, eos_token_id=None
        )[0, len(ids) :]
    llm = llama_cpp.Llama(
        str(ours_f32),
        n_ctx=64,
        n_threads=2,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    try:
        llm.eval(ids)
        tokens = []
        for _ in range(16):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(token)
            llm.eval([token])
    finally:
        llm.close()
    assert tokens == expected.tolist()


def test_torch_engine_matches_transformers_fp32(hf_checkpoint):
    folder = hf_checkpoint(ARCH)
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    model = load_model(folder)
    counter = RouterCounts(ref, model.args.n_experts)
    ref_prefill, ref_steps, fed = run_reference(ref, ids)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    assert model.usage.counts.tolist() == counter.counts.tolist()
    assert int(model.usage.counts.sum()) == (PREFILL + DECODE) * 2 * 4


def test_torch_greedy_generation_identical(hf_checkpoint):
    folder = hf_checkpoint(ARCH)
    ref, tok = reference_model(folder), reference_tokenizer(folder)
    prompt = "板前は寿司を握る。 The chef"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = ref.generate(ids, do_sample=False, max_new_tokens=16)[0, ids.shape[1] :].tolist()
    backend = load_torch(folder)
    if expected and expected[-1] in backend.generator.text.eos_ids:
        expected = expected[:-1]
    request = GenerationRequest(
        prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=16)
    )
    final = list(backend.stream(request))[-1]
    assert final.token_ids == expected


def test_three_turn_chat_reuses_state_exactly(hf_checkpoint):
    """Each turn's prompt extends the last one; the generator resumes from the state
    checkpoint at the previous turn's end and must give the logits of a fresh run."""
    backend = load_torch(hf_checkpoint(ARCH))
    gen, model = backend.generator, backend.generator.model
    messages: list[Message] = []
    for turn, text in enumerate(("Hello there.", "板前は何を切る?", "And the rice?")):
        messages.append(Message("user", text))
        request = GenerationRequest(
            messages=list(messages),
            sampling=SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
        )
        ids = gen.prompt_ids(request)
        reused, ran = gen._prefill(ids, None, None)
        fresh = model.forward(torch.tensor([ids]), model.new_cache())[0, -1]
        assert rel_err(reused, fresh) < 1e-5, f"turn {turn}"
        if turn:
            assert ran < len(ids)  # the earlier turns were not recomputed
        final = list(gen.stream(request))[-1]
        reply = backend.generator.text.decode(final.token_ids)
        messages.append(Message("assistant", reply))


def test_inspect_json_counts(hf_checkpoint, capsys, ours_f32):
    folder = hf_checkpoint(ARCH)
    state = reference_model(folder).state_dict()
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".experts." in n)
    for path in (folder, ours_f32):
        assert main(["inspect", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["n_experts"], info["experts_per_token"], info["n_shared_experts"]) == (8, 2, 1)
        assert (info["n_moe_layers"], info["n_linear_attention_layers"], info["n_layers"]) == (
            4,
            2,
            4,
        )
        assert info["total_params"] == total
        assert info["active_params"] == total - routed + routed * 2 // 8
