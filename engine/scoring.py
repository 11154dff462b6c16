"""Scorers: run a model over a token window and return every position's logits and routing.

The quality report (engine/evaluate.py) compares two models position by position, which
the chat `Backend` interface cannot give (it samples; it does not hand out logits). A
scorer (engine.types.Scorer) is the small interface that can:

    scorer.tokenize(text, add_special) -> [int]
    scorer.score(tokens) -> Scored(logits [T, V], routing {layer: experts [T, K]})

Each local backend has its own, found as `engine.load` finds a backend: the loader's
`detect` names the engine, and engine/<engine>/scorer.py opens it. A GGUF runs in llama.cpp
(engine/llamacpp/scorer.py: logits of every position, and the experts llama.cpp routed each
token to, read from its graph through the `cb_eval` callback); a Hugging Face folder or an
Itamae torch-format folder runs in the native torch engine (engine/torch/scorer.py, routing
read from its routers).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from converters.core.errors import ItamaeError

from .loader import detect
from .types import Scorer


def open_scorer(path: str | Path, window: int, threads: int = 0) -> Scorer:
    """A scorer for a GGUF file (llama.cpp) or a model folder (torch engine)."""
    found = detect(path)
    if found.engine == "remote":
        raise ItamaeError(
            "A remote model cannot be evaluated: its server does not return every position's logits.",
            "Evaluate a local copy (a .gguf file or a model folder).",
        )
    module = importlib.import_module(f"engine.{found.engine}.scorer")
    return module.open_scorer(found.location, window, threads)


def bos_prefix(scorer: Scorer) -> list[int]:
    """The tokens the model's tokenizer puts before any text (its BOS, or nothing)."""
    with_special = scorer.tokenize("a", add_special=True)
    without = scorer.tokenize("a", add_special=False)
    cut = len(with_special) - len(without)
    if cut > 0 and with_special[cut:] == without:
        return with_special[:cut]
    return []
