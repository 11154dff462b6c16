"""The sampling panel of the chat tab, per model: when a model is ready the sliders show
its settings (saved for it, else its own recommendations, else the app's defaults; see
app/model_settings.py), a change to a slider is saved for that model at once, and a
preset or "Model's defaults" sets them all. The sliders' ranges are model_settings.LIMITS.
"""

from __future__ import annotations

from dataclasses import asdict
from html import escape
from pathlib import Path

import gradio as gr

from app.context import AppContext
from app.i18n import Translator
from app.model_settings import FIELDS, LIMITS, PRESETS, ModelSampling, model_key
from app.ui.labels import Key, Labels
from converters.core.errors import ItamaeError
from engine.loader import resolve_source

STEPS = {
    "temperature": 0.05,
    "top_p": 0.01,
    "top_k": 1,
    "min_p": 0.01,
    "repeat_penalty": 0.01,
    "max_tokens": 16,
}
SLIDER_EXTRAS = {"top_k": {"info": Key("chat.zero_off")}, "max_tokens": {"elem_id": "max-tokens"}}


def preset_choices(ctx: AppContext, tr: Translator) -> list[tuple[str, str]]:
    return [(tr(f"sampling.{n}") if n in PRESETS else n, n) for n in ctx.model_settings.presets()]


def loaded_model(ctx: AppContext) -> tuple[str, Path | None] | None:
    """(settings key, local path) of the model that is ready; None while none is."""
    status = ctx.manager.status
    if status.state != "ready" or not status.source:
        return None
    try:
        source = resolve_source(status.source)
    except ItamaeError:
        return None
    return model_key(status.source), None if isinstance(source, str) else Path(source)


class SamplingPanel:
    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        self.preset = labels(
            gr.Dropdown,
            label=Key("chat.sampling_preset"),
            choices=[],
            value=None,
            elem_id="sampling-preset",
        )
        self.reset = labels(
            gr.Button, value=Key("chat.sampling_reset"), size="sm", elem_id="sampling-reset"
        )
        self.note = gr.HTML("", elem_id="sampling-note")
        defaults = asdict(ctx.settings.load().sampling)
        self.sliders = [
            labels(
                gr.Slider,
                *LIMITS[name],
                defaults[name],
                step=STEPS[name],
                label=Key(f"chat.{name}"),
                **SLIDER_EXTRAS.get(name, {}),
            )
            for name in FIELDS
        ]

    def current(self) -> ModelSampling | None:
        model = loaded_model(self.ctx)
        if model is None:
            return None
        return self.ctx.model_settings.sampling(*model, self.ctx.settings.load().sampling)

    def values(self, tr: Translator) -> list:
        """Values for `outputs`: the sliders (FIELDS order) and the note; skips while no
        model is ready."""
        sampling = self.current()
        if sampling is None:
            return [gr.skip()] * (len(FIELDS) + 1)
        values = asdict(sampling.values)
        if sampling.model_source:
            note = tr("chat.sampling_source", source=sampling.model_source)
        else:
            note = tr("chat.sampling_app")
        return [*(values[f] for f in FIELDS), f'<span class="muted">{escape(note)}</span>']

    @property
    def outputs(self) -> list:
        return [*self.sliders, self.note]

    def wire(self, lang: gr.State) -> None:
        hidden = {"show_progress": "hidden"}
        for name, slider in zip(FIELDS, self.sliders, strict=True):
            slider.input(
                lambda value, name=name: self.on_change(name, value),
                [slider],
                None,
                trigger_mode="always_last",
                **hidden,
            )
        self.preset.input(self.on_preset, [self.preset, lang], self.outputs, **hidden)
        self.reset.click(self.on_reset, [lang], self.outputs, **hidden)

    def on_change(self, name: str, value) -> None:
        model = loaded_model(self.ctx)
        if model is not None:
            self.ctx.model_settings.save(model[0], **{name: value})

    def on_preset(self, name: str | None, lang: str) -> list:
        model = loaded_model(self.ctx)
        if model is not None and name:
            self.ctx.model_settings.apply_preset(model[0], name)
        return self.values(Translator(lang))

    def on_reset(self, lang: str) -> list:
        model = loaded_model(self.ctx)
        if model is not None:
            self.ctx.model_settings.reset(model[0])
        return self.values(Translator(lang))
