"""The sampling settings a model's publisher recommends, read from the model's own files.

- A Hugging Face folder (and the torch format, which keeps the file):
  `generation_config.json` (transformers' GenerationConfig fields: temperature, top_p,
  top_k, min_p, repetition_penalty, max_new_tokens; `do_sample: false` means greedy).
- A GGUF file: the `general.sampling.*` keys (gguf-py's Keys.General.SAMPLING_*), which
  llama.cpp applies as the model's defaults and Itamae's converter writes from the
  generation config (converters/formats/gguf_writer.py uses SAMPLING_KEYS below).
- An Ollama model: the params layer of its manifest
  (`application/vnd.ollama.image.params`, a JSON object of Ollama's option names,
  https://github.com/ollama/ollama/blob/main/docs/modelfile.md#parameter), read from
  the blob store beside the manifests folder.

Field names are those of engine SamplingParams: temperature, top_p, top_k, min_p,
repeat_penalty, max_tokens. A broken or missing file gives no defaults, never an error:
the app's own defaults still apply.
"""

from __future__ import annotations

import json
from pathlib import Path

from gguf import Keys

from converters.core.errors import BadModelFile
from converters.formats.detect import is_gguf_file, source_format
from converters.formats.gguf_header import read_contents

# generation_config.json field -> general.sampling.* key (gguf-py Metadata's mapping).
SAMPLING_KEYS = {
    "temperature": Keys.General.SAMPLING_TEMP,
    "top_k": Keys.General.SAMPLING_TOP_K,
    "top_p": Keys.General.SAMPLING_TOP_P,
    "min_p": Keys.General.SAMPLING_MIN_P,
}
# Sampling field -> general.sampling.* key, for reading (llama.cpp also reads the penalty).
GGUF_SAMPLING_KEYS = SAMPLING_KEYS | {"repeat_penalty": Keys.General.SAMPLING_PENALTY_REPEAT}
# Sampling field -> its name in a source, where the names differ.
HF_NAMES = {"repeat_penalty": "repetition_penalty", "max_tokens": "max_new_tokens"}
OLLAMA_NAMES = {"max_tokens": "num_predict"}
INTEGER_FIELDS = ("top_k", "max_tokens")
OLLAMA_PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"


def sampling_defaults(path: str | Path) -> tuple[dict, str]:
    """(field -> value, where they came from); ({}, "") when the model says nothing."""
    path = Path(path)
    kind = source_format(path)
    if kind in ("hf", "torch"):
        return _numbers(
            _generation_config(path / "generation_config.json")
        ), "generation_config.json"
    if kind == "gguf":
        return _gguf(path), "general.sampling.*"
    if path.is_file() and is_ollama_manifest(path):
        return _ollama(path), "Ollama params"
    return {}, ""


def is_ollama_manifest(path: Path) -> bool:
    data = _json(path) if path.stat().st_size < 1 << 20 else None
    return isinstance(data, dict) and isinstance(data.get("layers"), list)


def _generation_config(path: Path) -> dict:
    config = _json(path) if path.is_file() else None
    if not isinstance(config, dict):
        return {}
    values = {f: config.get(HF_NAMES.get(f, f)) for f in (*GGUF_SAMPLING_KEYS, "max_tokens")}
    if config.get("do_sample") is False:
        values["temperature"] = 0.0  # transformers decodes greedily, whatever the temperature
    return values


def _gguf(path: Path) -> dict:
    if not is_gguf_file(path):
        return {}
    try:
        metadata = read_contents(path).metadata
    except BadModelFile:
        return {}
    return _numbers({f: metadata.get(key) for f, key in GGUF_SAMPLING_KEYS.items()})


def _ollama(manifest: Path) -> dict:
    layers = _json(manifest).get("layers")
    digest = next(
        (
            layer.get("digest")
            for layer in layers
            if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_PARAMS_MEDIA_TYPE
        ),
        None,
    )
    store = next((p.parent for p in manifest.parents if p.name == "manifests"), None)
    if not isinstance(digest, str) or store is None:
        return {}
    params = _json(store / "blobs" / digest.replace(":", "-"))
    if not isinstance(params, dict):
        return {}
    values = {f: params.get(OLLAMA_NAMES.get(f, f)) for f in (*GGUF_SAMPLING_KEYS, "max_tokens")}
    if isinstance(values["max_tokens"], int) and values["max_tokens"] <= 0:
        values["max_tokens"] = None  # -1: until the context is full, no limit to offer
    return _numbers(values)


def _numbers(values: dict) -> dict:
    out = {}
    for field, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        # GGUF stores float32: 0.6 reads back as 0.6000000238; six digits give 0.6 again.
        out[field] = int(value) if field in INTEGER_FIELDS else round(float(value), 6)
    return out


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
