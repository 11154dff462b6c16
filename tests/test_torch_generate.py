"""The torch backend as the app uses it: chat prompts, sampling, stop strings, cancellation,
context limits, the experts_per_token knob, KV-cache reuse, and `itamae generate --json`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest
import torch

import engine
from converters.core.errors import ContextTooLong, UnsupportedArchitecture
from engine.torch.sampling import Sampler
from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent
from tests.fixtures.reference import reference_tokenizer

PROMPT = "The sushi chef 板前 prepares"


@pytest.fixture(scope="module")
def folder(hf_checkpoint):
    return hf_checkpoint("deepseek_v3")


@pytest.fixture(scope="module")
def backend(folder):
    return engine.load(folder, engine="torch")


def _run(backend, cancel=None, **kw):
    sampling = {k: kw.pop(k) for k in list(kw) if hasattr(SamplingParams(), k)}
    sampling.setdefault("temperature", 0.0)
    req = GenerationRequest(sampling=SamplingParams(**sampling), **{"prompt": PROMPT, **kw})
    events = list(backend.stream(req, cancel))
    final = events[-1]
    assert isinstance(final, FinalEvent)
    text = "".join(e.text for e in events if isinstance(e, TokenEvent))
    return text, final


def test_chat_prompt_is_the_models_own_template(backend, folder):
    messages = [Message("system", "You are a chef."), Message("user", "寿司を一つ")]
    _, final = _run(backend, messages=messages, prompt=None, max_tokens=1)
    tok = reference_tokenizer(folder)
    expected = tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert final.prompt_token_ids == expected
    assert backend.tokenize("寿司") == tok("寿司").input_ids


def test_stop_string_cuts_the_text_and_finishes(backend):
    text, final = _run(backend, max_tokens=24)
    assert final.finish_reason in ("length", "stop") and len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut, final2 = _run(backend, max_tokens=24, stop=[stop])
    assert final2.finish_reason == "stop"
    assert cut == text[: text.index(stop)]


def test_cancel_takes_effect_within_one_token(backend):
    cancel = threading.Event()
    req = GenerationRequest(prompt=PROMPT, sampling=SamplingParams(temperature=0, max_tokens=50))
    tokens_seen = 0
    final = None
    for event in backend.stream(req, cancel):
        if isinstance(event, TokenEvent):
            tokens_seen += 1
            cancel.set()
        else:
            final = event
    assert final.finish_reason == "cancelled"
    assert final.stats.completion_tokens <= tokens_seen + 1


def test_context_limits(folder):
    small = engine.load(folder, engine="torch", context_length=24)
    _, final = _run(small, prompt="The chef " * 40, max_tokens=4)
    assert final.finish_reason == "error"
    assert "context" in final.error and "Start a new conversation" in final.error
    _, final = _run(small, max_tokens=100)  # fits, but the context ends before 100 tokens
    assert final.finish_reason in ("length", "stop")
    assert final.stats.prompt_tokens + final.stats.completion_tokens <= 24


def test_context_beyond_the_model_maximum_is_refused_at_load(folder):
    """Not capped in silence: a capped load made every longer prompt fail later, with a
    message about a context nobody asked for (the hybrid benchmark's 16k cells)."""
    limit = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ContextTooLong, match=f"maximum of {limit} positions"):
        engine.load(folder, engine="torch", context_length=limit + 1)
    assert engine.load(folder, engine="torch", context_length=limit).info.context_length == limit


def test_seeded_sampling_is_reproducible(backend):
    params = dict(
        temperature=1.0, top_p=0.95, top_k=50, min_p=0.01, repeat_penalty=1.1, max_tokens=12
    )
    a = _run(backend, seed=7, **params)[1].token_ids
    b = _run(backend, seed=7, **params)[1].token_ids
    c = _run(backend, seed=8, **params)[1].token_ids
    assert a == b and a != c


def test_sampler_limits_reduce_to_greedy():
    logits = torch.randn(500)
    best = int(logits.argmax())
    for params in (dict(top_k=1), dict(min_p=1.0), dict(top_p=1e-6)):
        for seed in range(5):
            assert Sampler(SamplingParams(temperature=1.5, seed=seed, **params))(logits, []) == best
    # the repeat penalty pushes a seen token below its rival
    logits = torch.tensor([2.0, 1.9, -1.0])
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1.5))(logits, [0]) == 1


def test_experts_per_token_override(backend):
    model = backend.model
    k_default = model.args.experts_per_token
    _, default = _run(backend, max_tokens=6)
    _, one = _run(backend, max_tokens=6, experts_per_token=1)
    # every token run went to k routed experts in each MoE layer: per-layer totals are equal
    # and a multiple of k (the prefix reused from the previous request is not rerun)
    per_layer_one = {sum(row) for row in one.stats.expert_counts}
    per_layer_default = {sum(row) for row in default.stats.expert_counts}
    assert len(per_layer_one) == 1 and per_layer_one.pop() >= one.stats.completion_tokens
    assert len(per_layer_default) == 1 and per_layer_default.pop() % k_default == 0
    assert k_default > 1 and one.token_ids != default.token_ids
    _, again = _run(backend, max_tokens=6)  # the override does not stick
    assert again.token_ids == default.token_ids
    _, bad = _run(backend, max_tokens=2, experts_per_token=999)
    assert bad.finish_reason == "error" and "experts_per_token" in bad.error


def test_kv_cache_reuse_gives_the_same_tokens(folder, backend):
    first = _run(backend, prompt=PROMPT, max_tokens=8)[1]
    longer = PROMPT + " fish and rice"
    reused = _run(backend, prompt=longer, max_tokens=8)[1]
    fresh = _run(engine.load(folder, engine="torch"), prompt=longer, max_tokens=8)[1]
    assert reused.token_ids == fresh.token_ids
    assert first.prompt_token_ids == reused.prompt_token_ids[: len(first.prompt_token_ids)]


def test_generate_command_json(folder):
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", "--model", str(folder), "--engine", "torch",
         "--prompt", PROMPT, "--max-tokens", "5", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"text", "prompt_tokens", "tokens", "finish_reason", "stats"} <= set(result)
    assert len(result["tokens"]) == result["stats"]["completion_tokens"] <= 5
    counts = result["stats"]["expert_counts"]
    assert len(counts) == 2 and len(counts[0]) == 16  # 2 MoE layers, 16 routed experts
    assert result["stats"]["cache_hits"] + result["stats"]["cache_misses"] > 0


def test_unsupported_architecture_says_what_to_do(folder, tmp_path):
    other = tmp_path / "gpt2ish"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="llama.cpp"):
        engine.load(other, engine="torch")


def test_bench_command_json(folder):
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--model", str(folder), "--engine", "torch",
         "--prompt-tokens", "20", "--gen-tokens", "4", "--expert-budget", "0.5", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("engine", "model", "prefill_tps", "decode_tps", "ttft_s", "peak_rss_bytes"):
        assert key in result, key
    assert result["engine"] == "torch" and result["prompt_tokens"] == 20
    assert result["prefill_tps"] > 0 and result["peak_rss_bytes"] > 0
    assert result["cache_misses"] > 0  # half the experts fit: some misses
