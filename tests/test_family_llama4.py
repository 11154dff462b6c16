"""Llama 4 (Scout / Maverick) end to end on tiny checkpoints laid out as Meta publishes
Llama-4-Scout-17B-16E (tests/fixtures/llama4.py: the vision-language wrapper, fused
experts stored [E, in, out], NoPE every 4th layer; "llama4_chunked" with Maverick's dense
layers between the MoE ones and 16-token chunks).

References nobody here wrote:
- llama.cpp's own converter on the same folder: every tensor (name, shape, type, data)
  and every `llama4.*` key of Itamae's GGUF equal to the file it writes.
- llama.cpp's F32 logits on Itamae's GGUF (F32 KV) within 1e-4 of transformers fp32, the
  same greedy tokens. llama.cpp hard-codes 8192-token chunks and temperature floor and
  ignores `attention_chunk_size` / `floor_scale`: the Scout-shaped fixture has those
  values (32-token prompt); the 16-token-chunk fixture is checked on a 12-token prompt,
  which stays inside one chunk and below its temperature floor.
- The torch engine within 1e-4 of transformers fp32 on a 32-token prefill and 16 decode
  steps (the chunked fixture crosses two chunk boundaries and rescales its NoPE queries;
  also with Maverick's `use_qk_norm` false), expert counts equal to transformers' routers, greedy generation identical, and a
  three-turn chat equal to the conversation recomputed from nothing.
- `itamae inspect --json` against counts taken from transformers' model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from app.cli import main
from converters.conversion.convert import convert
from engine.torch.backend import load as load_torch
from engine.types import GenerationRequest, SamplingParams
from tests.chat_turns import assert_turns_reuse_exactly
from tests.convert_helpers import llama_cpp_logits, relative_error, transformers_logits
from tests.fixtures.llama4 import VARIANTS, fixture_path
from tests.fixtures.llamacpp_reference import reference_pair
from tests.fixtures.reference import reference_model, reference_tokenizer
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

llama_cpp = pytest.importorskip("llama_cpp")
N_EXPERTS, MOE_LAYERS = 8, {"llama4": 4, "llama4_chunked": 2}
HEAD_DIM = 64


@pytest.fixture(scope="module")
def converted_f32(tmp_path_factory):
    """`itamae convert FOLDER -o F32.gguf --quant F32`, once per variant."""
    made = {}

    def make(variant):
        if variant not in made:
            dest = tmp_path_factory.mktemp(variant) / "f32.gguf"
            assert main(["convert", str(fixture_path(variant)), "-o", str(dest),
                         "--quant", "F32", "--json"]) == 0  # fmt: skip
            made[variant] = dest
        return made[variant]

    return make


class RouterChoices:
    """Experts chosen per MoE layer by transformers' Llama4Router modules (top-k of their
    logits), counted with forward hooks."""

    def __init__(self, ref, n_experts: int):
        routers = [m for m in ref.modules() if type(m).__name__ == "Llama4Router"]
        assert routers, "no router modules found"
        self.counts = torch.zeros(len(routers), n_experts, dtype=torch.int64)
        for i, router in enumerate(routers):
            router.register_forward_hook(self._hook(i, router.top_k))

    def _hook(self, layer, top_k):
        def hook(module, args, output):
            chosen = torch.topk(output[1], top_k, dim=-1).indices.flatten()
            self.counts[layer] += torch.bincount(chosen, minlength=self.counts.shape[1])

        return hook


@pytest.mark.slow  # llama.cpp's converter in a subprocess (cached after the first run)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gguf_equals_llama_cpp_converters(variant, tmp_path):
    folder, theirs = reference_pair(fixture_path(variant), "f32")
    ours = tmp_path / "itamae.gguf"
    convert(folder, ours, "F32")
    a, b = GGUFReader(ours), GGUFReader(theirs)
    mine, their = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(mine) == set(their)
    assert "blk.1.ffn_gate_exps.weight" in mine and "blk.1.ffn_up_shexp.weight" in mine
    assert ("blk.0.ffn_gate.weight" in mine) == (variant == "llama4_chunked")  # dense layer 0
    for name, t in their.items():
        assert list(mine[name].shape) == list(t.shape), name
        assert mine[name].tensor_type == t.tensor_type, name
        assert np.array_equal(mine[name].data, t.data), name
    keys = {k for k in b.fields if k.startswith("llama4.")}
    assert {k for k in a.fields if k.startswith("llama4.")} == keys
    for key in keys:
        assert a.fields[key].contents() == b.fields[key].contents(), key


def llama_cpp_prompt(folder, n: int) -> list[int]:
    """<|begin_of_text|> then n - 1 ordinary tokens."""
    bos = reference_tokenizer(folder).bos_token_id
    return [bos] + list(range(40, 40 + n - 1))


@pytest.mark.parametrize("variant, n", [("llama4", 32), ("llama4_chunked", 12)])
def test_llama_cpp_logits_match_transformers(variant, n, converted_f32):
    folder = fixture_path(variant)
    prompt = llama_cpp_prompt(folder, n)
    got, want = (
        llama_cpp_logits(converted_f32(variant), prompt),
        transformers_logits(folder, prompt),
    )
    assert relative_error(got, want) <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()


def test_llama_cpp_greedy_equals_transformers(converted_f32):
    folder = fixture_path("llama4")
    ids = llama_cpp_prompt(folder, 11)
    with torch.no_grad():
        expected = reference_model(folder).generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=16, eos_token_id=None
        )[0, len(ids) :]
    llm = llama_cpp.Llama(
        str(converted_f32("llama4")), n_ctx=64, n_threads=2, logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False,
    )  # fmt: skip
    try:
        llm.eval(ids)
        tokens = []
        for _ in range(16):
            tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([tokens[-1]])
    finally:
        llm.close()
    assert tokens == expected.tolist()


@pytest.fixture(scope="module")
def without_qk_norm(tmp_path_factory):
    """llama4_chunked as Maverick configures its attention: `use_qk_norm` false."""
    dest = tmp_path_factory.mktemp("maverick") / "llama4_no_qk_norm"
    shutil.copytree(fixture_path("llama4_chunked"), dest)
    config = json.loads((dest / "config.json").read_text())
    config["text_config"]["use_qk_norm"] = False
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


@pytest.mark.parametrize("variant", [*VARIANTS, "no_qk_norm"])
def test_torch_engine_matches_transformers_fp32(variant, without_qk_norm):
    folder = without_qk_norm if variant == "no_qk_norm" else fixture_path(variant)
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    model = load_model(folder)
    choices = RouterChoices(ref, N_EXPERTS)
    ref_prefill, ref_steps, fed = run_reference(ref, ids)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    assert model.usage.counts.tolist() == choices.counts.tolist()
    n_moe = MOE_LAYERS.get(variant, MOE_LAYERS["llama4_chunked"])
    assert int(model.usage.counts.sum()) == (PREFILL + DECODE) * 1 * n_moe


def test_torch_format_runs_as_the_checkpoint(tmp_path):
    """The torch format (experts one contiguous row each, from the transposed fused
    tensors) gives the logits and routing of the hub folder it was converted from."""
    folder = fixture_path("llama4_chunked")
    convert(folder, tmp_path / "torch", "bf16", fmt="torch")
    ids = prompt_ids(folder)
    hub, packed = load_model(folder), load_model(tmp_path / "torch")
    want, _ = run_ours(hub, ids, [])
    got, _ = run_ours(packed, ids, [])
    assert torch.equal(got, want)  # bf16 weights both ways, the same bits
    assert packed.usage.counts.tolist() == hub.usage.counts.tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_greedy_generation_identical(variant):
    folder = fixture_path(variant)
    ref, tok = reference_model(folder), reference_tokenizer(folder)
    prompt = "板前は寿司を握る。 The chef"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = ref.generate(ids, do_sample=False, max_new_tokens=16)[0, ids.shape[1] :].tolist()
    backend = load_torch(folder, dtype="float32")  # transformers runs fp32
    if expected and expected[-1] in backend.generator.text.eos_ids:
        expected = expected[:-1]
    request = GenerationRequest(
        prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=16)
    )
    final = list(backend.stream(request))[-1]
    assert final.prompt_token_ids == ids[0].tolist()
    assert final.token_ids == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_three_turn_chat_reuses_cache_exactly(variant):
    """Each turn's prompt (Meta's template) extends the last one; the generator reuses the
    cached prefix and must give the logits of a fresh run of the whole conversation."""
    ids = assert_turns_reuse_exactly(load_torch(fixture_path(variant), dtype="float32"))
    assert len(ids) > 16  # the last prompt spans more than one chunk of llama4_chunked


@pytest.mark.parametrize("variant", VARIANTS)
def test_inspect_json_counts(variant, converted_f32, capsys):
    """Counts of transformers' language model (the vision tower is not the chat model's)."""
    folder = fixture_path(variant)
    state = reference_model(folder).state_dict()
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".experts." in n)
    active = total - routed + routed // N_EXPERTS  # top-1 of 8
    n_moe = MOE_LAYERS[variant]
    for path, extra in ((folder, 0), (converted_f32(variant), HEAD_DIM // 2)):
        assert main(["inspect", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["arch"] == "llama4"
        assert (info["n_experts"], info["experts_per_token"], info["n_shared_experts"]) == (8, 1, 1)
        assert (info["n_layers"], info["n_moe_layers"]) == (4, n_moe)
        # the GGUF adds rope_freqs (llama3 scaling), which transformers computes instead
        assert (info["total_params"], info["active_params"]) == (total + extra, active + extra)


def test_chat_reply_same_in_both_engines(converted_f32, capsys):
    """`itamae generate --chat` renders Meta's template once (one <|begin_of_text|>) and
    both engines, fp32, give the same greedy reply."""
    gguf, replies = converted_f32("llama4"), []
    capsys.readouterr()  # the conversion's own report
    for model, engine in ((fixture_path("llama4"), "torch"), (gguf, "llamacpp")):
        argv = ["generate", "--model", str(model), "--engine", engine, "--prompt", "Hello there",
                "--chat", "--max-tokens", "8", "--temperature", "0", "--json"]  # fmt: skip
        assert main(argv) == 0
        replies.append(json.loads(capsys.readouterr().out))
    torch_reply, llama_reply = replies
    bos = reference_tokenizer(fixture_path("llama4")).bos_token_id
    assert torch_reply["prompt_tokens"] == llama_reply["prompt_tokens"]
    assert torch_reply["prompt_tokens"].count(bos) == 1
    assert torch_reply["tokens"] == llama_reply["tokens"] and len(torch_reply["tokens"]) == 8
