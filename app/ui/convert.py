"""The convert tab: a source, a recipe (with the estimated output size of each), the
format (GGUF for llama.cpp, or the torch format for the native engine), whether to
measure the result's quality afterwards, a progress bar and cancel. The result lands
in the models folder and so in the models tab, with its quality report if measured.

The work (app/convert_job.py: the conversion, then the optional evaluation) runs in a
thread; the handler polls its progress the way the download does.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from app import library
from app.context import AppContext
from app.convert_job import ConvertJob, progress_html, run_job
from app.i18n import Translator
from app.ui.labels import Key, Labels
from app.ui.library_view import human_bytes, library_update, scan_library
from converters.conversion.recipes import DEFAULTS, recipes_for

POLL_S = 0.3


def recipe_choices(fmt: str, total_params: int, tr: Translator) -> list[tuple[str, str]]:
    """The format's recipes (the converter's own table), each with the size it would give."""
    choices = []
    for recipe in recipes_for(fmt):
        label = recipe.name
        if total_params:
            label = f"{recipe.name} · ≈{human_bytes(int(total_params * recipe.nominal_bits / 8))}"
        choices.append((label, recipe.name))
    return choices


def source_choices(ctx: AppContext, tr: Translator) -> list[tuple[str, str]]:
    entries = scan_library(ctx)
    # Only Hugging Face folders convert (a GGUF is already converted).
    return [
        (f"{e.name} ({tr(f'models.where.{e.source}')})", e.key)
        for e in entries
        if e.path.is_dir() and (e.info is None or e.info.format == "hf")
    ]


def default_output(source: str, recipe: str, fmt: str) -> str:
    stem = Path(source.rstrip("/")).name or "model"
    return f"{stem}-{recipe}.gguf" if fmt == "gguf" else f"{stem}-{recipe}"


class ConvertTab:
    """One conversion at a time per browser tab: its running `ConvertJob` is in gr.State."""

    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        with gr.Column(elem_id="convert"):
            labels(gr.Markdown, value=Key("convert.intro"), elem_classes="intro")
            self._build_choices(labels)
            with gr.Row():
                self.start = labels(
                    gr.Button,
                    value=Key("convert.start"),
                    variant="primary",
                    elem_id="convert-start",
                )
                self.cancel = labels(
                    gr.Button, value=Key("convert.cancel"), variant="stop", visible=False
                )
            self.progress = gr.HTML("", elem_id="convert-progress")
            self.job = gr.State(None)

    def _build_choices(self, labels: Labels) -> None:
        self.source = labels(
            gr.Dropdown,
            choices=[],
            label=Key("convert.source"),
            info=Key("convert.source_info"),
            allow_custom_value=True,
            elem_id="convert-source",
        )
        formats = [(Key("convert.gguf"), "gguf"), (Key("convert.torch"), "torch")]
        self.fmt = labels(gr.Radio, choices=formats, value="gguf", label=Key("convert.format"))
        self.recipe = labels(
            gr.Radio,
            choices=recipe_choices("gguf", 0, labels.tr),
            value=DEFAULTS["gguf"],
            label=Key("convert.recipe"),
            info=Key("convert.recipe_info"),
            elem_id="recipe",
        )
        self.output_name = labels(
            gr.Textbox, label=Key("convert.output"), placeholder=Key("convert.output_placeholder")
        )
        # Off by default: it runs both models over the whole calibration text.
        self.quality = labels(
            gr.Checkbox,
            value=False,
            label=Key("convert.measure_quality"),
            info=Key("convert.measure_quality_info"),
            elem_id="convert-quality",
        )

    @property
    def translated_outputs(self) -> list:
        return [self.source]

    def translated_values(self, tr: Translator) -> list:
        return [gr.update(choices=source_choices(self.ctx, tr))]

    # -- events ----------------------------------------------------------------------

    def wire(self, lang: gr.State, library_table: gr.Dataframe) -> None:
        """`library_table`: the models tab's table, redrawn when a conversion ends."""
        for trigger in (self.source.change, self.fmt.change):
            trigger(
                self.on_source, [self.source, self.fmt, lang], [self.recipe], show_progress="hidden"
            )
        self.fmt.input(self.on_fmt, [self.fmt], [self.recipe])
        self.start.click(
            self.on_start,
            [self.source, self.recipe, self.fmt, self.output_name, lang, self.quality],
            [self.progress, self.job, self.start, self.cancel, library_table],
            show_progress="hidden",
        )
        self.cancel.click(self.on_cancel, [self.job], None, queue=False)

    def on_source(self, source: str, fmt: str, lang: str):
        info, _ = library.inspect_model(Path(source)) if source else (None, "")
        total = info.total_params if info else 0
        return gr.update(choices=recipe_choices(fmt, total, Translator(lang)))

    def on_fmt(self, fmt: str):
        return gr.update(value=DEFAULTS[fmt])

    def on_start(
        self,
        source: str,
        recipe: str,
        fmt: str,
        name: str,
        lang: str,
        measure_quality: bool = False,
    ):
        tr = Translator(lang)
        hidden, shown = gr.update(visible=False), gr.update(visible=True)
        if not source or not recipe:
            gr.Warning(tr("convert.pick_source"))
            return
        models_dir = self.ctx.settings.models_dir()
        models_dir.mkdir(parents=True, exist_ok=True)
        name = (name or "").strip() or default_output(source, recipe, fmt)
        if Path(name).name != name or name.startswith("."):
            gr.Warning(tr("convert.bad_name"))
            return
        job = ConvertJob(measure_quality=bool(measure_quality))
        worker = threading.Thread(
            target=run_job, args=(job, source, models_dir / name, recipe, fmt), daemon=True
        )
        worker.start()
        while not job.finished:
            yield progress_html(job, tr), job, hidden, shown, gr.skip()
            time.sleep(POLL_S)
        yield progress_html(job, tr), None, shown, hidden, library_update(self.ctx, tr)

    def on_cancel(self, job: ConvertJob | None):
        if job is not None:
            job.cancel.set()
