"""Translated component properties: `labels(gr.Button, value=Key("chat.send"))` builds
the component in the page's first language and remembers which properties were keys,
so that one event relabels the whole UI when the language switch moves.
Texts come from app/i18n.py's catalogs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.i18n import DEFAULT_LANGUAGE, Translator


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

    One instance per Blocks (made in app/ui/page.py's build_ui), never module state.
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

    def bare_textbox(self, placeholder: Key, **kwargs):
        """A text box with no label or frame, its hint as the placeholder: the search
        field, or a box in a row beside the button that takes its text."""
        return self(
            gr.Textbox, placeholder=placeholder, show_label=False, container=False, **kwargs
        )

    @property
    def components(self) -> list:
        return [component for component, _ in self._bound]

    def updates(self, lang: str) -> list[dict]:
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
