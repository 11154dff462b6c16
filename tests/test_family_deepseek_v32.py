"""DeepSeek-V3.2 (DeepSeek Sparse Attention) in the torch engine against transformers fp32,
on a fixture laid out as published whose indexer top-k (8) is below every prompt here, so
the indexer's choice decides the attention: logits on a 32-token prefill and 16 decode
steps within 1e-4, greedy generation identical, expert counts equal to transformers'
routers, and the same numbers with the indexer switched off differ (the check can fail);
a three-turn chat, each turn reusing the cached latent and indexer keys of the last, gives
what a fresh engine computes from the whole conversation. The GGUF Itamae writes has the
tensor names, shapes and `deepseek32.*` keys of llama.cpp's own converter's file (run with
--no-mtp, see converters/archs/deepseek_v32.py) and its F32 logits in llama.cpp match
transformers within 1e-4 on 32 tokens, greedy identical. `itamae inspect --json` is exact.

In tests/fixtures/checkpoints.ARCHS, so the generic parity, quantization, inspect and
llama.cpp backend tests cover it too; not in test_convert_vs_llamacpp's PARITY: its shared
llama.cpp reference (reference_pair) runs llama.cpp's converter without the BOS shim and
with the MTP layer, which Itamae's file leaves out, so the comparison is made here instead
(shim, --no-mtp)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from gguf import GGUFReader
from safetensors import safe_open

import engine
from app.cli import main
from converters.conversion.convert import convert
from converters.facts.inspection import inspect
from engine.types import GenerationRequest, Message, SamplingParams
from tests.convert_helpers import PROMPT, llama_cpp_logits, relative_error, transformers_logits
from tests.fixtures.checkpoints import REPO
from tests.fixtures.llamacpp_reference import llama_cpp_source, with_recognized_vocabulary
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

ARCH = "deepseek_v32"


@pytest.fixture(scope="module")
def folder(hf_checkpoint):
    return hf_checkpoint(ARCH)


@pytest.fixture(scope="module")
def reference(folder):
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    counter = RouterCounts(ref, ref.config.n_routed_experts)
    return ids, run_reference(ref, ids), counter.counts


def test_prompt_is_longer_than_the_indexer_top_k(folder):
    model = load_model(folder)
    assert model.args.index_topk < PREFILL
    assert all(layer.attn.indexer is not None for layer in model.layers)


def test_logits_and_routing_match_transformers_fp32(folder, reference):
    ids, (ref_prefill, ref_steps, fed), ref_counts = reference
    model = load_model(folder)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    assert model.usage.counts.tolist() == ref_counts.tolist()
    assert int(model.usage.counts.sum()) == (
        (PREFILL + DECODE) * model.args.experts_per_token * len(model.moe_layers)
    )


def test_dense_attention_would_not_match(folder, reference):
    # the same model reading every position: the indexer's choice is what makes it match
    ids, (ref_prefill, ref_steps, fed), _ = reference
    model = load_model(folder)
    for layer in model.layers:
        layer.attn.indexer = None
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) > 10 * TOL
    assert max(rel_err(o, t) for o, t in zip(steps, ref_steps, strict=True)) > 10 * TOL


def test_greedy_generation_identical(folder):
    ref, tok = reference_model(folder), reference_tokenizer(folder)
    prompt = "板前は寿司を握る。 The chef slices the tuna"
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids.shape[1] > load_model(folder).args.index_topk
    with torch.no_grad():
        expected = ref.generate(ids, do_sample=False, max_new_tokens=16)[0, ids.shape[1] :].tolist()
    backend = engine.load(folder, engine="torch")
    try:
        if expected and expected[-1] in backend.generator.text.eos_ids:
            expected = expected[:-1]  # transformers returns the EOS it stopped at
        request = GenerationRequest(
            prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=16)
        )
        final = list(backend.stream(request))[-1]
    finally:
        backend.close()
    assert final.prompt_token_ids == ids[0].tolist()
    assert final.token_ids == expected


TURNS = ["Hello! おすすめは何ですか？", "Then tuna, please.", "And the rice?"]


def _reply(backend, messages) -> tuple[str, list[int], list[int]]:
    req = GenerationRequest(
        messages=[Message(**m) for m in messages],
        sampling=SamplingParams(temperature=0, max_tokens=8),
    )
    events = list(backend.stream(req))
    final = events[-1]
    assert final.finish_reason in ("length", "stop"), final.error
    text = "".join(e.text for e in events[:-1])
    return text, final.prompt_token_ids, final.token_ids


def test_three_turn_chat_equals_the_recomputed_conversation(folder):
    chat = engine.load(folder, engine="torch")
    messages: list[dict] = []
    try:
        for turn in TURNS:
            messages.append({"role": "user", "content": turn})
            cached = list(chat.generator.cached_ids)
            text, prompt, tokens = _reply(chat, messages)
            fresh = engine.load(folder, engine="torch")
            try:
                assert _reply(fresh, messages)[1:] == (prompt, tokens)
            finally:
                fresh.close()
            if cached:  # the turn ran on the kept cache, sparse attention over it included
                kept = next(
                    (i for i, (a, b) in enumerate(zip(cached, prompt, strict=False)) if a != b),
                    min(len(cached), len(prompt)),
                )
                assert kept > chat.generator.model.args.index_topk
            messages.append({"role": "assistant", "content": text})
    finally:
        chat.close()


def test_inspect_json_is_exact(folder, capsys):
    state = reference_model(folder).state_dict()  # transformers skips the MTP layer too
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".experts." in n)
    with safe_open(folder / "model.safetensors", "pt") as f:  # as published, MTP layer aside
        n_tensors = sum(not k.startswith("model.layers.3.") for k in f.keys())
    assert main(["inspect", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {
        "path": str(folder),
        "format": "hf",
        "arch": ARCH,
        "name": "itamae-tiny-deepseek_v32",
        "total_params": total,
        "active_params": total - routed + routed * 4 // 16,
        "n_layers": 3,
        "n_experts": 16,
        "experts_per_token": 4,
        "n_shared_experts": 1,
        "n_moe_layers": 2,
        "n_linear_attention_layers": 0,
        "context_length": 163840,
        "vocab_size": 1024,
        "dtypes": {"F32": n_tensors},
        "quant": "f32",
        "bits_per_weight": dict.fromkeys(
            ("experts", "shared", "attention", "embeddings", "other"), 32.0
        ),
        "size_bytes": (folder / "model.safetensors").stat().st_size,
        "license": "apache-2.0",
        "files": ["model.safetensors"],
        "extra": {},
        "is_moe": True,
    }


@pytest.fixture(scope="module")
def llamacpp_pair(folder, tmp_path_factory):
    """(the fixture with GPT-2's vocabulary, llama.cpp's own GGUF of it with --no-mtp)."""
    root = tmp_path_factory.mktemp("v32_llamacpp")
    src = with_recognized_vocabulary(folder, root / "checkpoint")
    theirs = root / "llamacpp.gguf"
    script = llama_cpp_source() / "convert_hf_to_gguf.py"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fixtures.llamacpp_convert_bos_shim",
            str(script),
            str(src),
            "--outfile",
            str(theirs),
            "--outtype",
            "f32",
            "--no-mtp",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return src, theirs


def test_gguf_is_what_llama_cpps_converter_writes(llamacpp_pair, tmp_path):
    src, theirs = llamacpp_pair
    ours = tmp_path / "itamae.gguf"
    convert(src, ours, "F32")
    a, b = GGUFReader(ours), GGUFReader(theirs)
    assert {t.name: tuple(t.shape) for t in a.tensors} == {
        t.name: tuple(t.shape) for t in b.tensors
    }
    assert any(t.name == "blk.1.indexer.attn_q_b.weight" for t in a.tensors)
    arch_keys = {k for k in b.fields if k.startswith("deepseek32.")}
    assert {k for k in a.fields if k.startswith("deepseek32.")} == arch_keys
    for key in arch_keys:
        assert a.fields[key].contents() == b.fields[key].contents(), key
    assert a.fields["general.architecture"].contents() == "deepseek32"
    assert inspect(ours).arch == ARCH


def test_gguf_logits_in_llama_cpp_match_transformers(llamacpp_pair, tmp_path):
    src, _ = llamacpp_pair
    ours = tmp_path / "itamae.gguf"
    convert(src, ours, "F32")
    assert len(PROMPT) > load_model(src).args.index_topk
    got, want = llama_cpp_logits(ours, PROMPT), transformers_logits(src, PROMPT)
    assert relative_error(got, want) < TOL
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_memory_plan_counts_the_indexer_key_cache(llamacpp_pair, tmp_path):
    from engine.llamacpp.backend import load

    ours = tmp_path / "itamae.gguf"
    convert(llamacpp_pair[0], ours, "F32")
    backend = load(ours, n_ctx=512, threads=2)
    try:
        # llama.cpp logs the main (MLA latent) cache, then the indexer key cache
        sizes = [
            float(x.split("size =")[1].split("MiB")[0])
            for x in backend.native.load_log
            if "llama_kv_cache: size =" in x
        ]
        assert len(sizes) == 2
        assert backend.plan.kv_bytes / 2**20 == pytest.approx(sum(sizes), abs=0.012)
        assert backend.plan.layout.indexer_key_length == 64
    finally:
        backend.close()
