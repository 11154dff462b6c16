"""Constrained JSON-schema decoding libraries on a large HF tokenizer, on the CPU.

    python -m tests.benchmarks.bench_constrained

Measures, for each library that is installed (llguidance is a dependency; xgrammar and
outlines-core are measured only where someone installed them for the comparison): the
tokenizer setup, one schema's compile, and the mask computation plus advance per token
while the tokens of a fixed valid answer are fed. The tokenizer is Qwen2's (151,936
tokens), read by transformers from llama.cpp's models/ggml-vocab-qwen2.gguf in the
llama-cpp-python sdist (tests/fixtures/llamacpp_reference.py fetches it). Prints one
JSON object per library.
"""

from __future__ import annotations

import importlib.util
import json
import time

from tests.fixtures.llamacpp_reference import llama_cpp_source

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1},
        "units": {"enum": ["metric", "imperial"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "days", "units", "tags"],
    "additionalProperties": False,
}
ANSWER = {"city": "Tokyo", "days": 3, "units": "metric", "tags": ["rain", "wind"]}


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def bench_llguidance(hf, ids) -> dict:
    import llguidance

    from engine.constrained import JSON_OPTIONS

    tokenizer, setup = _timed(
        lambda: llguidance.LLTokenizer(hf.backend_tokenizer.to_str(), n_vocab=len(hf))
    )
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, overrides=JSON_OPTIONS)
    matcher, compile_s = _timed(lambda: llguidance.LLMatcher(tokenizer, grammar))
    started = time.perf_counter()
    for token in ids:
        matcher.compute_bitmask()
        assert matcher.consume_token(token), matcher.get_error()
    step = (time.perf_counter() - started) / len(ids)
    return {
        "library": f"llguidance {llguidance.__version__}",
        "setup_s": setup,
        "compile_s": compile_s,
        "per_token_us": step * 1e6,
    }


def bench_xgrammar(hf, ids) -> dict:
    import xgrammar as xgr

    def setup():
        return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(hf, vocab_size=len(hf)))

    compiler, setup_s = _timed(setup)
    compiled, compile_s = _timed(
        lambda: compiler.compile_json_schema(
            json.dumps(SCHEMA), any_whitespace=False, separators=(", ", ": ")
        )
    )
    matcher, mask = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, len(hf))
    started = time.perf_counter()
    for token in ids:
        matcher.fill_next_token_bitmask(mask)
        assert matcher.accept_token(token)
    step = (time.perf_counter() - started) / len(ids)
    return {
        "library": "xgrammar",
        "setup_s": setup_s,
        "compile_s": compile_s,
        "per_token_us": step * 1e6,
    }


def bench_outlines_core(hf, ids) -> dict:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    def setup():
        vocab: dict[str, list[int]] = {}
        for token, i in hf.get_vocab().items():
            if i != hf.eos_token_id:
                vocab.setdefault(hf.convert_tokens_to_string([token]), []).append(i)
        return outlines_core.Vocabulary(hf.eos_token_id or len(hf) - 1, vocab)

    vocabulary, setup_s = _timed(setup)
    regex = build_regex_from_schema(json.dumps(SCHEMA), r"[ ]?")
    index, compile_s = _timed(lambda: outlines_core.Index(regex, vocabulary))
    guide = outlines_core.Guide(index)
    started = time.perf_counter()
    for token in ids:
        guide.get_tokens()
        guide.advance(token)
    step = (time.perf_counter() - started) / len(ids)
    return {
        "library": "outlines-core",
        "setup_s": setup_s,
        "compile_s": compile_s,
        "per_token_us": step * 1e6,
    }


def main() -> None:
    from transformers import AutoTokenizer

    models = llama_cpp_source() / "models"
    hf = AutoTokenizer.from_pretrained(models, gguf_file="ggml-vocab-qwen2.gguf")
    ids = hf.encode(json.dumps(ANSWER), add_special_tokens=False)
    benches = {
        "llguidance": bench_llguidance,
        "xgrammar": bench_xgrammar,
        "outlines_core": bench_outlines_core,
    }
    for module, bench in benches.items():
        if importlib.util.find_spec(module) is None:
            print(json.dumps({"library": module, "skipped": "not installed"}))
            continue
        result = bench(hf, ids)
        print(
            json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()})
        )


if __name__ == "__main__":
    main()
