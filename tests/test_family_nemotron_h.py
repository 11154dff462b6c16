"""Nemotron-H (Nemotron-3-Nano-30B-A3B) on a tiny checkpoint laid out as NVIDIA publishes it
(tests/fixtures/nemotron_h.py: `backbone.` names, one tensor per expert, the layers as a
`hybrid_override_pattern` string "MEM*EME").

References nobody here wrote:
- llama.cpp's own converter on the same folder: every tensor (name, shape, type, data)
  and every `nemotron_h_moe.*` key of Itamae's GGUF equal to the file it writes. Its
  vocabulary is padded to a multiple of 8 (as the published 131072 is) with seven of
  Nemotron's special tokens, since llama.cpp's loader expects that many embedding rows.
- llama.cpp's F32 logits on Itamae's GGUF (F32 KV) within 1e-4 of transformers fp32 on a
  32-token prompt (Mamba-2's 16-token chunks crossed), the same greedy tokens.
- The torch engine within 1e-4 of transformers fp32 on a 32-token prefill and 16 decode
  steps (Mamba-2 chunked, then recurrent), expert counts equal to transformers' routers,
  greedy generation identical, and a three-turn chat equal to the conversation recomputed
  from nothing (the Mamba-2 states checkpointed at turn ends).
- `itamae inspect --json` of the folder and of its GGUF against counts taken from
  transformers' NemotronHForCausalLM: its parameters, its routed experts (top-2 of 8 active
  per token), its layer kinds.
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
from engine.types import GenerationRequest, SamplingParams
from tests.chat_turns import assert_turns_reuse_exactly
from tests.convert_helpers import llama_cpp_run, relative_error, transformers_logits
from tests.fixtures.llamacpp_reference import reference_pair
from tests.fixtures.nemotron_h import NANO, PATTERN, fixture_path
from tests.fixtures.reference import reference_model, reference_tokenizer
from tests.test_torch_parity import (
    TOL,
    RouterCounts,
    load_model,
    prompt_ids,
    rel_err,
    run_ours,
    run_reference,
)

pytest.importorskip("transformers.models.nemotron_h")
pytest.importorskip("llama_cpp")
# 50257 GPT-2 tokens + 7 = 50264, a multiple of 8
PADDING_TOKENS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>",
                  "</tool_call>", "<tool_response>")  # fmt: skip


@pytest.fixture(scope="module")
def converted_f32(tmp_path_factory):
    dest = tmp_path_factory.mktemp("nemotron_h") / "f32.gguf"
    assert main(["convert", str(fixture_path()), "-o", str(dest), "--quant", "F32", "--json"]) == 0
    return dest


def test_inspect_json_counts(converted_f32, capsys):
    model = reference_model(fixture_path())
    kinds = model.config.layers_block_type  # transformers' reading of the pattern
    state = model.state_dict()
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".experts." in n)
    n_experts, top_k = NANO["n_routed_experts"], NANO["num_experts_per_tok"]
    active = total - routed + routed * top_k // n_experts
    capsys.readouterr()  # the conversion's own report
    for path in (fixture_path(), converted_f32):
        assert main(["inspect", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["arch"] == "nemotron_h"
        assert (info["n_experts"], info["experts_per_token"], info["n_shared_experts"]) == (8, 2, 1)
        assert info["n_layers"] == len(kinds) == len(PATTERN)
        assert info["n_moe_layers"] == kinds.count("moe") == 3
        assert info["n_linear_attention_layers"] == kinds.count("linear_attention") == 3
        assert (info["total_params"], info["active_params"]) == (total, active)


@pytest.mark.slow  # llama.cpp's converter in a subprocess (cached after the first run)
def test_gguf_equals_llama_cpp_converters(tmp_path):
    folder, theirs = reference_pair(fixture_path(), "f32", added_tokens=PADDING_TOKENS)
    ours = tmp_path / "itamae.gguf"
    convert(folder, ours, "F32")
    a, b = GGUFReader(ours), GGUFReader(theirs)
    mine, their = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(mine) == set(their)
    assert {"blk.0.ssm_a", "blk.1.ffn_up_exps.weight", "blk.3.attn_q.weight"} <= set(mine)
    for name, t in their.items():
        assert list(mine[name].shape) == list(t.shape), name
        assert mine[name].tensor_type == t.tensor_type, name
        assert np.array_equal(mine[name].data, t.data), name
    keys = {k for k in b.fields if k.startswith("nemotron_h_moe.")}
    assert {k for k in a.fields if k.startswith("nemotron_h_moe.")} == keys
    for key in keys:
        assert a.fields[key].contents() == b.fields[key].contents(), key


def prompt_of(n: int) -> list[int]:
    bos = reference_tokenizer(fixture_path()).bos_token_id
    return [bos] + list(range(40, 40 + n - 1))


def test_llama_cpp_logits_and_greedy_match_transformers(converted_f32):
    prompt = prompt_of(32)
    got, greedy = llama_cpp_run(converted_f32, prompt, new_tokens=16)
    want = transformers_logits(fixture_path(), prompt)
    assert relative_error(got, want) <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    with torch.no_grad():
        expected = reference_model(fixture_path()).generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=16, eos_token_id=None
        )[0, len(prompt) :]
    assert greedy == expected.tolist()


def test_torch_engine_matches_transformers_fp32():
    folder = fixture_path()
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    model = load_model(folder)
    routers = RouterCounts(ref, NANO["n_routed_experts"])
    ref_prefill, ref_steps, fed = run_reference(ref, ids)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    assert model.usage.counts.tolist() == routers.counts.tolist()


def test_torch_engine_greedy_equals_transformers():
    folder = fixture_path()
    prompt = "板前は寿司を握る。 The chef"
    ids = reference_tokenizer(folder)(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = (
            reference_model(folder)
            .generate(ids, do_sample=False, max_new_tokens=16, eos_token_id=None)[0, ids.shape[1] :]
            .tolist()
        )
    backend = load_torch(folder, dtype="float32")
    request = GenerationRequest(
        prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    )
    final = list(backend.stream(request))[-1]
    assert final.prompt_token_ids == ids[0].tolist()
    assert final.token_ids == expected


def test_three_turn_chat_reuses_cache_exactly():
    assert_turns_reuse_exactly(load_torch(fixture_path(), dtype="float32"))


def test_torch_format_refuses_with_advice(tmp_path, capsys):
    """The torch format cannot lay out Nemotron-H's gateless experts yet: it says so and
    names the routes that work (the folder in the torch engine, or GGUF), instead of
    failing on the missing gate projections."""
    dest = tmp_path / "torch-format"
    assert main(["convert", str(fixture_path()), "-o", str(dest), "--format", "torch"]) != 0
    said = capsys.readouterr()
    assert "nemotron_h" in said.err and "--engine torch" in said.err
    assert "--engine llamacpp" in said.err
    assert not dest.exists()
