"""English and Japanese for every label, following the browser, with a switch.

Catalogs are flat JSON files, assets/i18n/<lang>.json (key -> text with `{name}`
placeholders); every key exists in every catalog (tests/test_ui_views.py checks it).
Translation happens on the server: the language is per browser session (picked from
the browser's Accept-Language, changed by the switch in the header), and a switch
relabels every bound component at once through `Labels.updates` (app/ui/labels.py).
Text made at run time (status lines, errors, stats) goes through the same `Translator`.
"""

from __future__ import annotations

import json
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
