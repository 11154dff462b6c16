"""Scorers: run a model over a token window and return every position's logits and routing.

The quality report (engine/evaluate.py) compares two models position by position, which
the chat `Backend` interface cannot give (it samples; it does not hand out logits). A
scorer is the small interface that can:

    scorer.tokenize(text, add_special) -> [int]
    scorer.score(tokens) -> Scored(logits [T, V], routing {layer: experts [T, K]})

Two implementations, chosen by the model's format as `engine.load` chooses a backend:
a GGUF runs in llama.cpp (engine/scoring_llamacpp.py: logits of every position, and the
experts llama.cpp routed each token to, read from its graph through the `cb_eval`
callback); a Hugging Face folder or an Itamae torch-format folder runs in the native
torch engine (engine/scoring_torch.py, routing read from its routers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class Scored:
    logits: np.ndarray  # [T, V] float32, position t predicts token t+1
    # MoE layer index (0-based over all layers) -> experts chosen per token [T, K] int
    routing: dict[int, np.ndarray] = field(default_factory=dict)


class Scorer(Protocol):
    name: str  # "llama.cpp" | "torch"
    compute: str  # how it computes, in words (dtype, cache), for the report
    vocab_size: int
    context_length: int
    moe_layers: list[int]  # layer indices whose routing `score` reports ([] for a dense model)
    routing_note: str  # why routing is not reported although the model routes, or ""

    def tokenize(self, text: str, add_special: bool) -> list[int]: ...

    def score(self, tokens: list[int]) -> Scored: ...

    def close(self) -> None: ...


def open_scorer(path: str | Path, window: int, threads: int = 0) -> Scorer:
    """A scorer for a .gguf file (llama.cpp) or a model folder (torch engine)."""
    from .loader import resolve_source

    engine = "llamacpp" if str(path).endswith(".gguf") else "auto"
    source = resolve_source(path, engine)
    if isinstance(source, str):
        from converters.core.errors import ItamaeError

        raise ItamaeError(
            "A remote model cannot be evaluated: its server does not return every position's logits.",
            "Evaluate a local copy (a .gguf file or a model folder).",
        )
    if source.is_file() and source.suffix == ".gguf":
        from .scoring_llamacpp import LlamaCppScorer

        return LlamaCppScorer(source, window, threads)
    from .scoring_torch import TorchScorer

    return TorchScorer(source, threads)


def bos_prefix(scorer: Scorer) -> list[int]:
    """The tokens the model's tokenizer puts before any text (its BOS, or nothing)."""
    with_special = scorer.tokenize("a", add_special=True)
    without = scorer.tokenize("a", add_special=False)
    cut = len(with_special) - len(without)
    if cut > 0 and with_special[cut:] == without:
        return with_special[:cut]
    return []
