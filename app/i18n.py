"""English and Japanese for every label, following the browser, with a switch.

Catalogs are flat JSON files, assets/i18n/<lang>.json (key -> text with `{name}`
placeholders); every key exists in every catalog (tests/test_ui_i18n.py checks it).
Translation happens on the server: the language is per browser session (picked from
the browser's Accept-Language, changed by the switch in the header), and a switch
relabels every bound component at once through `Labels.updates`. Text made at run
time (status lines, errors, stats) goes through the same `Translator`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CATALOG_DIR = Path(__file__).resolve().parent.parent / "assets" / "i18n"
LANGUAGES = {"en": "English", "ja": "日本語"}
DEFAULT_LANGUAGE = "en"


@cache
def catalog(lang: str) -> dict[str, str]:
    """The catalog for `lang`, read once (the files ship with the code and never change)."""
    return json.loads((CATALOG_DIR / f"{lang}.json").read_text(encoding="utf-8"))


def pick_language(accept_language: str | None) -> str:
    """The best supported language for an Accept-Language header ("ja-JP,ja;q=0.9,en;q=0.8")."""
    ranked = []
    for order, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, order, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        base = tag.split("-")[0]
        if base in LANGUAGES:
            return base
    return DEFAULT_LANGUAGE


def normalize(lang: str | None) -> str:
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


class Translator:
    def __init__(self, lang: str | None):
        self.lang = normalize(lang)

    def __call__(self, key: str, **values: Any) -> str:
        text = catalog(self.lang).get(key) or catalog(DEFAULT_LANGUAGE).get(key) or key
        return text.format(**values) if values else text


@dataclass(frozen=True)
class Key:
    """A translatable property value: `label=Key("chat.send")`."""

    name: str


def _resolve(value: Any, tr: Translator) -> Any:
    if isinstance(value, Key):
        return tr(value.name)
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, tr) for v in value)
    return value


def _has_key(value: Any) -> bool:
    if isinstance(value, Key):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_key(v) for v in value)
    return False


class Labels:
    """Builds components with translated properties and remembers them, so that one
    event can relabel the whole UI: `labels(gr.Button, value=Key("chat.send"))`.

    One instance per Blocks (made in ui.build_ui), never module state.
    """

    def __init__(self, lang: str = DEFAULT_LANGUAGE):
        self.tr = Translator(lang)
        self._bound: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, component_class, *args, **kwargs):
        keyed = {name: value for name, value in kwargs.items() if _has_key(value)}
        resolved = {name: _resolve(value, self.tr) for name, value in keyed.items()}
        component = component_class(*args, **{**kwargs, **resolved})
        if keyed:
            self._bound.append((component, keyed))
        return component

    @property
    def components(self) -> list:
        return [component for component, _ in self._bound]

    def updates(self, lang: str) -> list[dict]:
        import gradio as gr

        tr = Translator(lang)
        return [
            gr.update(**{name: _resolve(value, tr) for name, value in keyed.items()})
            for _, keyed in self._bound
        ]

    def keys(self) -> set[str]:
        found: set[str] = set()

        def collect(value):
            if isinstance(value, Key):
                found.add(value.name)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    collect(v)

        for _, keyed in self._bound:
            for value in keyed.values():
                collect(value)
        return found
