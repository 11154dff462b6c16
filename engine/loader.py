"""`engine.load(source)`: the one door from the app to a backend.

Backends are found by name (engine/<name>/backend.py exposing `load`), so adding one
is adding a folder, and the app never imports a backend's internals.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from converters.core.errors import ItamaeError

from .types import Backend

ENGINES = ("torch", "llamacpp", "remote")
DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"


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


def pick_engine(source: Path | str, engine: str = "auto") -> str:
    if engine != "auto":
        if engine not in ENGINES:
            raise ItamaeError(
                f"Unknown engine {engine!r}.", f"Choose one of: {', '.join(ENGINES)}."
            )
        return engine
    if isinstance(source, str):
        return "remote"
    if source.is_file() and source.suffix == ".gguf":
        return "llamacpp"
    return "torch"


def load(source: str | Path, engine: str = "auto", **options) -> Backend:
    """Load a model and return a running Backend. `options` go to the backend (placement, threads...)."""
    resolved = resolve_source(source, engine)
    name = pick_engine(resolved, engine)
    module = importlib.import_module(f"engine.{name}.backend")
    return module.load(resolved, **options)
