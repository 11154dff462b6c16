"""`engine.detect(source)` and `engine.load(source)`: the one door from the app to a backend.

`detect` decides once what a source is: where it is (the bundled demo, a path, a server's
URL), its format by content (converters.formats.detect: GGUF magic bytes, a safetensors
header, the torch-format manifest, config.json; never the file name), the engine that runs
it and its family (the Hugging Face `model_type`). `load`, the scorers, the library and
the UI ask it rather than looking at names themselves.

Backends are found by name (engine/<name>/backend.py exposing `load`, engine/<name>/scorer.py
exposing `open_scorer`), so adding one is adding a folder, and the app never imports a
backend's internals.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from converters import archs
from converters.core.errors import BadModelFile, ItamaeError
from converters.core.json_files import read_model_json
from converters.formats.detect import source_format
from converters.formats.gguf_header import read_contents

from .types import Backend

ENGINES = ("torch", "llamacpp", "remote")
DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"
# the engine that runs each local format when the person leaves the choice to Itamae
ENGINE_OF_FORMAT = {"gguf": "llamacpp", "hf": "torch", "torch": "torch", "unknown": "torch"}


@dataclass
class Detected:
    """What a source is, decided once: see `detect`."""

    source: str  # what the person typed: "demo", a path, a URL
    location: Path | str  # the file or folder it names, or a server's URL
    format: str  # a converters.formats.detect.SourceFormat, or "remote" for a URL
    engine: str  # the backend that runs it, one of ENGINES

    @cached_property
    def family(self) -> str:
        """The Hugging Face `model_type` ("qwen3_moe"), or "" where the source does not say
        (a server, a folder without config.json). Read on first use: a GGUF's header, a
        folder's config.json."""
        if self.format == "gguf":
            return archs.family_from_gguf(read_contents(self.location).metadata)
        if self.format in ("hf", "torch"):
            config = read_model_json(Path(self.location) / "config.json")
            config = archs.normalise_config(config) if isinstance(config, dict) else {}
            family = config.get("model_type")
            return family if isinstance(family, str) else ""
        return ""


def detect(source: str | Path, engine: str = "auto") -> Detected:
    """Where `source` is, its format by content, the engine for it (`engine` unless "auto")."""
    location = resolve_source(source, engine)
    fmt = "remote" if isinstance(location, str) else source_format(location)
    return Detected(str(source), location, fmt, _engine_for(location, fmt, engine))


def resolve_source(source: str | Path, engine: str = "auto") -> Path | str:
    """Turn what a person typed (`demo`, a folder, a .gguf, a URL) into a loadable source."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        return text
    if text == "demo":
        if engine == "llamacpp":
            ggufs = sorted(DEMO_DIR.glob("*.gguf"))
            if ggufs:
                return ggufs[0]
        hf = DEMO_DIR / "hf"
        if hf.is_dir():
            return hf
        raise ItamaeError(
            "The bundled demo model is not in this installation.",
            "Pass --model with a model folder or a .gguf file.",
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise ItamaeError(f"No model at {path}.", "Check the path, or run `itamae inspect PATH`.")
    return path


def _engine_for(location: Path | str, fmt: str, engine: str) -> str:
    if engine != "auto":
        if engine not in ENGINES:
            raise ItamaeError(
                f"Unknown engine {engine!r}.", f"Choose one of: {', '.join(ENGINES)}."
            )
        return engine
    if fmt == "remote":
        return "remote"
    if isinstance(location, Path) and location.is_file() and fmt != "gguf":
        why = (
            "a lone safetensors file has no config or tokenizer"
            if fmt == "safetensors"
            else "it does not start with the GGUF magic bytes"
        )
        raise BadModelFile(
            f"{location.name} is not a model file Itamae can run: {why}.",
            "Give a GGUF file, or a model folder (config.json, tokenizer, *.safetensors).",
        )
    return ENGINE_OF_FORMAT[fmt]


def load(source: str | Path, engine: str = "auto", **options) -> Backend:
    """Load a model and return a running Backend. `options` go to the backend (placement, threads...)."""
    found = detect(source, engine)
    module = importlib.import_module(f"engine.{found.engine}.backend")
    return module.load(found.location, **options)
