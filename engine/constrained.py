"""Constrained decoding for the torch engine: JSON that matches a schema, token by token.

Through llguidance (github.com/guidance-ai/llguidance, the engine llama.cpp builds in with
LLAMA_LLGUIDANCE): it reads the model's own tokenizer.json (no transformers needed, which
the app never imports), has no Python dependencies, compiles a schema lazily (3-10 ms)
and computes a token mask in 0.15-0.5 ms on Qwen2's 152k vocabulary (three runs on this
shared 2-core machine), small beside a real model's decode step. Measured beside it
(tests/benchmarks/bench_constrained.py): xgrammar 0.2.9 masks faster (16-25 us a
token) but compiles each schema up front (54-89 ms) and needs transformers, triton and
tvm-ffi; outlines-core 0.2.14 builds an index per schema (0.5-2 s) and takes 3-4 ms a
token.

JSON is written compactly (no whitespace between tokens) so that a small model cannot
wander off into endless spaces; the llama.cpp engine's grammar (engine/llamacpp/
grammar.py) allows at most one space or newline run in the same places.
"""

from __future__ import annotations

import json

import llguidance
import torch

from converters.core.errors import ItamaeError
from engine.types import OutputConstraint

# Compact JSON, and refuse schema keywords llguidance cannot enforce (a schema that is
# silently half-enforced is a broken promise).
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class UnsupportedSchema(ItamaeError):
    pass


def _lark_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _lark(sequences: list, token_id) -> str:
    """A Lark grammar (llguidance's dialect: %json inline schemas, <[id]> special tokens)
    accepting one of `sequences` (engine.types.OutputConstraint)."""
    rules = ["start: " + " | ".join(f"seq{i}" for i in range(len(sequences)))]
    for i, sequence in enumerate(sequences):
        items = []
        for j, (kind, value) in enumerate(sequence):
            if kind == "text":
                items.append(_lark_string(value))
            elif kind == "token":
                tid = token_id(value)
                items.append(f"<[{tid}]>" if tid is not None else _lark_string(value))
            elif kind == "json":
                rules.append(
                    f"json{i}_{j}: %json {json.dumps({**value, 'x-guidance': JSON_OPTIONS})}"
                )
                items.append(f"json{i}_{j}")
            elif kind == "oneof":
                items.append("(" + " | ".join(_lark_string(v) for v in value) + ")")
            else:  # raw: a bare XML value
                repeat = f"{{0,{value}}}" if value else "*"
                rules.append(f"RAW{i}_{j}: /[^<]{repeat}/")
                items.append(f"RAW{i}_{j}")
        rules.append(f"seq{i}: " + " ".join(items))
    return "\n".join(rules)


def grammar_for(constraint: OutputConstraint, token_id=lambda text: None) -> str:
    """llguidance's grammar text for a constraint; UnsupportedSchema names what is wrong.
    `token_id(text)` is a special token's id in the model's vocabulary, or None."""
    schema = constraint.json_schema or {"type": "object"}
    try:
        if constraint.sequences:
            grammar = llguidance.LLMatcher.grammar_from_lark(_lark(constraint.sequences, token_id))
        else:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), overrides=JSON_OPTIONS
            )
    except ValueError as e:
        raise UnsupportedSchema(f"The JSON schema is not valid JSON: {e}", "") from e
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise UnsupportedSchema(
            f"The JSON schema cannot be enforced: {error}",
            "Remove or simplify the schema part named above.",
        )
    return grammar


class JsonConstraint:
    """The tokens allowed next, for one generation; advance it with every sampled token."""

    def __init__(
        self, tokenizer: llguidance.LLTokenizer, constraint: OutputConstraint, token_id=None
    ):
        grammar = grammar_for(constraint, token_id or (lambda text: None))
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        self.n_vocab = tokenizer.vocab_size
        self._check()

    def allowed(self, n_logits: int) -> torch.Tensor:
        """[n_logits] bool: True where the token keeps the output valid."""
        words = self.matcher.compute_bitmask()
        self._check()
        bits = torch.frombuffer(bytearray(words), dtype=torch.uint8)
        # the mask is little-endian 32-bit words: token i is bit i % 8 of byte i // 8
        unpacked = (bits.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
        mask = unpacked.flatten().bool()[:n_logits]
        if mask.numel() < n_logits:  # logits padded past the tokenizer's vocabulary
            mask = torch.cat([mask, torch.zeros(n_logits - mask.numel(), dtype=torch.bool)])
        return mask

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)
        self._check()

    @property
    def finished(self) -> bool:
        """The JSON is complete: nothing but end-of-sequence may follow."""
        return self.matcher.is_stopped()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise ItamaeError(
                f"Constrained decoding failed: {self.matcher.get_error()}",
                "Report this with the schema that caused it.",
            )


def tokenizer_for(tokenizer_json: str, n_vocab: int, eos_ids: set[int]) -> llguidance.LLTokenizer:
    """llguidance's view of a model's tokenizer (about 1-3 s for a large vocabulary: keep it)."""
    return llguidance.LLTokenizer(
        tokenizer_json, n_vocab=n_vocab, eos_token=sorted(eos_ids) or None
    )
