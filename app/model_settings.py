"""Sampling settings per model: what the model's files recommend, what the person
changed for that model, and named presets.

What a model answers with is, field by field, the first of: the value the person saved
for this model, the model's own recommendation (converters.facts.sampling_defaults:
generation_config.json, GGUF general.sampling.*, an Ollama params layer), the app's
defaults (Settings.sampling). The saved values and the person's presets live in one
JSON file under the data dir (model_settings.json), replaced atomically on every save,
so a changed value is there after a restart and a crash never leaves half a file.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from app.settings import SamplingDefaults, write_atomically
from converters.core.errors import ItamaeError
from converters.facts.sampling_defaults import sampling_defaults
from engine.loader import resolve_source

FILE_VERSION = 1
# field -> (lowest, highest) a value may have: the chat tab's sliders are built from these.
LIMITS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.05, 1.0),
    "top_k": (0, 200),
    "min_p": (0.0, 0.5),
    "repeat_penalty": (1.0, 2.0),
    "max_tokens": (16, 8192),
}
FIELDS = tuple(f.name for f in fields(SamplingDefaults))
# Built-in presets; a person's own presets with the same name replace them.
PRESETS = {
    "precise": {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.05,
    },
    "balanced": {
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
    },
    "creative": {
        "temperature": 1.1,
        "top_p": 0.98,
        "top_k": 100,
        "min_p": 0.02,
        "repeat_penalty": 1.0,
    },
}


@dataclass
class ModelSampling:
    """The values a model answers with and, per field, where each came from:
    "saved" (the person, for this model), "model" (its files) or "app"."""

    values: SamplingDefaults
    sources: dict[str, str] = field(default_factory=dict)
    model_source: str = ""  # which of the model's files gave its defaults


class ModelSettings:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    # -- per model ---------------------------------------------------------------------

    def sampling(
        self, model_key: str, model_path: Path | str | None, app: SamplingDefaults
    ) -> ModelSampling:
        recommended, source = sampling_defaults(model_path) if model_path else ({}, "")
        saved = self._read()["models"].get(model_key, {})
        values, sources = asdict(app), dict.fromkeys(FIELDS, "app")
        for origin, layer in (("model", recommended), ("saved", saved)):
            for name, value in layer.items():
                if name in values:
                    values[name], sources[name] = clamp(name, value), origin
        return ModelSampling(SamplingDefaults(**values), sources, source)

    def save(self, model_key: str, **changes) -> dict:
        """Keep these values for this model (on top of what it saved before); returns
        everything saved for it."""
        checked = {name: _checked(name, value) for name, value in changes.items()}
        with self._lock:
            data = self._read()
            saved = data["models"].setdefault(model_key, {}) | checked
            data["models"][model_key] = saved
            self._write(data)
        return saved

    def reset(self, model_key: str) -> None:
        """Forget what was saved for this model: its own recommendations apply again."""
        with self._lock:
            data = self._read()
            if data["models"].pop(model_key, None) is not None:
                self._write(data)

    def apply_preset(self, model_key: str, name: str) -> dict:
        return self.save(model_key, **self.presets()[_known(name, self.presets())])

    # -- presets -----------------------------------------------------------------------

    def presets(self) -> dict[str, dict]:
        return PRESETS | self._read()["presets"]

    def save_preset(self, name: str, values: SamplingDefaults | dict) -> None:
        name = " ".join(name.split())
        if not name:
            raise ItamaeError("A preset needs a name.", "Type a name and save again.")
        raw = asdict(values) if isinstance(values, SamplingDefaults) else values
        checked = {k: _checked(k, v) for k, v in raw.items()}
        with self._lock:
            data = self._read()
            data["presets"][name] = checked
            self._write(data)

    def delete_preset(self, name: str) -> None:
        with self._lock:
            data = self._read()
            _known(name, data["presets"])
            del data["presets"][name]
            self._write(data)

    # -- the file ----------------------------------------------------------------------

    def _read(self) -> dict:
        if not self.path.exists():
            return {"version": FILE_VERSION, "models": {}, "presets": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            models, presets = data.get("models", {}), data.get("presets", {})
            if not isinstance(models, dict) or not isinstance(presets, dict):
                raise ValueError("'models' and 'presets' must be objects")
        except (ValueError, AttributeError) as e:
            raise ItamaeError(
                f"The model settings file {self.path} is not valid ({e}).",
                "Fix it by hand, or delete it to go back to each model's own defaults.",
            ) from e
        return {"version": FILE_VERSION, "models": models, "presets": presets}

    def _write(self, data: dict) -> None:
        write_atomically(self.path, json.dumps(data, ensure_ascii=False, indent=2))


def clamp(name: str, value: float | int) -> float | int:
    """A model's recommendation inside what the sliders offer (a top_k of 1000 is 200)."""
    lo, hi = LIMITS[name]
    return type(lo)(min(max(value, lo), hi))


def _checked(name: str, value) -> float | int:
    if name not in LIMITS:
        raise ItamaeError(
            f"{name!r} is not a sampling setting.", f"Use one of: {', '.join(LIMITS)}."
        )
    lo, hi = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ItamaeError(
            f"{name} must be a number from {lo} to {hi}, not {value!r}.",
            "Pick a value inside that range (the slider shows it).",
        )
    return int(value) if isinstance(lo, int) else float(value)


def _known(name: str, presets: dict) -> str:
    if name not in presets:
        raise ItamaeError(
            f"There is no preset named {name!r}.", f"Presets: {', '.join(presets) or 'none'}."
        )
    return name


def model_key(source: str | Path) -> str:
    """The name a model's saved settings are kept under: its resolved path (so "demo",
    a relative path and the absolute one are the same model), or its URL."""
    resolved = resolve_source(source)
    return resolved if isinstance(resolved, str) else str(Path(resolved).resolve())
