"""The quality report: what quantizing a model cost, measured against its source.

    evaluate(model, reference, text=None) -> dict      # `itamae eval`, the Convert tab
    save_report(report, model) -> Path                 # <model>.quality.json beside it
    load_quality_report(model) -> dict | None          # the Models tab

Both models read the same token ids (the reference's tokenization of the text) in
windows of at most `window` tokens, each window starting from an empty cache with the
tokenizer's BOS, as llama.cpp's perplexity tool does. Every position is compared (see
engine/quality_metrics.py for the definitions); per MoE layer, so is the set of experts
each token was routed to. A GGUF runs in llama.cpp and its routing is read from
llama.cpp's own graph; a folder runs in the torch engine and its routing is read from
the engine's routers (engine/<backend>/scorer.py), so mixed pairs (a GGUF against its Hugging
Face source) are compared too.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from converters.core.errors import Cancelled, ItamaeError
from converters.facts.inspection import inspect
from converters.formats.detect import is_gguf_file

from .quality_metrics import Totals, compare_logits
from .scoring import bos_prefix, open_scorer
from .types import Scorer

DEFAULT_WINDOW = 512  # llama-perplexity's default context; long enough for routing to settle
MIN_WINDOW_TOKENS = 8  # a shorter tail adds noise, not evidence
REPORT_SUFFIX = ".quality.json"
REPORT_VERSION = 1
Progress = Callable[[int, int], None]  # (windows done, windows in all)


def default_calibration_text() -> str:
    """The bilingual (English + Japanese) calibration text that ships with Itamae."""
    return resources.files("assets.calibration").joinpath("bilingual.txt").read_text("utf-8")


def report_path(model: str | Path) -> Path:
    """`demo-Q4_0.gguf` -> `demo-Q4_0.quality.json`; a folder `m-int4` -> `m-int4.quality.json`."""
    model = Path(model)
    if is_gguf_file(model):
        return model.with_name(model.stem + REPORT_SUFFIX)
    return model.with_name(model.name + REPORT_SUFFIX)


def save_report(report: dict, model: str | Path) -> Path:
    """Write atomically (temporary name, then rename) so a reader never sees half a report."""
    path = report_path(model)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


def load_quality_report(model: str | Path) -> dict | None:
    """The stored report of a model, or None when it has none (or it cannot be read)."""
    path = report_path(model)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "kl_mean" in data else None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _describe(path: Path) -> dict:
    """What `itamae inspect` says of a model's quantization: recipe and bits per weight."""
    try:
        info = inspect(path)
    except ItamaeError:
        return {"quant": "", "bits_per_weight": {}, "fallbacks": None}
    return {
        "quant": info.quant,
        "bits_per_weight": info.bits_per_weight,
        # tensors the recipe's type could not take (None: the file does not say)
        "fallbacks": info.extra.get("quant_fallbacks"),
    }


def _windows(tokens: list[int], bos: list[int], window: int) -> list[list[int]]:
    step = window - len(bos)
    chunks = [tokens[i : i + step] for i in range(0, len(tokens), step)]
    return [bos + c for c in chunks if len(c) >= MIN_WINDOW_TOKENS]


def _check_pair(model: Scorer, reference: Scorer) -> None:
    if model.vocab_size != reference.vocab_size:
        raise ItamaeError(
            f"The model has {model.vocab_size} tokens and the reference {reference.vocab_size}: "
            "they are not the same model.",
            "Give as --reference the checkpoint the model was converted from.",
        )
    if model.moe_layers and reference.moe_layers and model.moe_layers != reference.moe_layers:
        raise ItamaeError(
            f"The model routes in layers {model.moe_layers}, the reference in "
            f"{reference.moe_layers}: they are not the same architecture.",
            "Give as --reference the checkpoint the model was converted from.",
        )


def _score_windows(model, reference, windows, progress, cancel) -> Totals:
    totals = Totals()
    layers = [i for i in reference.moe_layers if i in model.moe_layers]
    for done, ids in enumerate(windows, start=1):
        if cancel is not None and cancel.is_set():
            raise Cancelled("The evaluation was cancelled.", "")
        ref, mod = reference.score(ids), model.score(ids)
        totals.add_positions(compare_logits(mod.logits, ref.logits, ids))
        for layer in layers:
            totals.add_routing(layer, mod.routing[layer], ref.routing[layer])
        if progress is not None:
            progress(done, len(windows))
    return totals


def evaluate(
    model: str | Path,
    reference: str | Path,
    text: str | None = None,
    window: int = DEFAULT_WINDOW,
    threads: int = 0,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    text_label: str = "",
) -> dict:
    """Compare `model` (quantized) with `reference` (its source) on `text` -> the report."""
    started = time.perf_counter()
    text_label = text_label or ("default bilingual calibration text" if text is None else "text")
    text = default_calibration_text() if text is None else text
    ref_scorer = open_scorer(reference, window, threads)
    try:
        model_scorer = open_scorer(model, window, threads)
        try:
            _check_pair(model_scorer, ref_scorer)
            window = min(window, ref_scorer.context_length, model_scorer.context_length)
            tokens = ref_scorer.tokenize(text, add_special=False)
            same_tokens = model_scorer.tokenize(text, add_special=False) == tokens
            windows = _windows(tokens, bos_prefix(ref_scorer), window)
            if not windows:
                raise ItamaeError(
                    f"The text is {len(tokens)} tokens long; too short to measure anything.",
                    f"Give a text of at least {MIN_WINDOW_TOKENS} tokens (a few sentences).",
                )
            totals = _score_windows(model_scorer, ref_scorer, windows, progress, cancel)
            engines = (model_scorer.name, ref_scorer.name)
            computes = (model_scorer.compute, ref_scorer.compute)
            routing_seen = bool(model_scorer.moe_layers and ref_scorer.moe_layers)
            routing_note = model_scorer.routing_note or ref_scorer.routing_note
        finally:
            model_scorer.close()
    finally:
        ref_scorer.close()
    report = totals.summary()
    agreement = report["expert_agreement"]
    report["expert_agreement_mean"] = sum(agreement) / len(agreement) if agreement else None
    described = _describe(Path(model))
    report.update(
        report_version=REPORT_VERSION,
        model=str(model),
        reference=str(reference),
        model_engine=engines[0],
        reference_engine=engines[1],
        model_compute=computes[0],
        reference_compute=computes[1],
        model_quant=described["quant"],
        model_bits_per_weight=described["bits_per_weight"],
        model_quant_fallbacks=described["fallbacks"],
        reference_quant=_describe(Path(reference))["quant"],
        model_size_bytes=_size(Path(model)),
        reference_size_bytes=_size(Path(reference)),
        text=text_label,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        text_tokens=len(tokens),
        tokenizations_agree=same_tokens,
        window=window,
        windows=len(windows),
        routing_observed=routing_seen,
        routing_note=routing_note,
        seconds=round(time.perf_counter() - started, 3),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return report
