"""The models tab: what is on this machine, what each model is, load and unload with
an engine and a placement, download from the hub, delete.

How the library and a model's facts look is app/ui/library_view.py; this module builds
the tab and answers its events.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from app import library
from app.context import AppContext
from app.i18n import Translator
from app.ui.labels import Key, Labels
from app.ui.library_view import (
    COLUMNS,
    details_markdown,
    download_html,
    find_entry,
    library_update,
    plan_markdown,
)
from converters.core.errors import ItamaeError

DOWNLOAD_POLL_S = 0.5


def load_options(context_length, gpu_layers, cpu_moe_layers, expert_cache_gb) -> dict:
    """Only what the person set; everything left at "auto" is the backend's own plan.
    Option names are the backends' (engine/torch/backend.py, engine/llamacpp/backend.py);
    each backend ignores the other's."""
    options = {}
    if context_length and context_length > 0:
        options["context_length"] = int(context_length)
    if gpu_layers is not None and gpu_layers >= 0:
        options["gpu_layers"] = int(gpu_layers)
    if cpu_moe_layers is not None and cpu_moe_layers >= 0:
        options["cpu_moe"] = int(cpu_moe_layers)
    if expert_cache_gb and expert_cache_gb > 0:
        options["expert_budget"] = int(expert_cache_gb * 1e9)
    return options


class ModelsTab:
    """The library table with its add and download rows, and the selected model's panel."""

    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                self._build_library(labels)
            with gr.Column(scale=2, min_width=320, elem_id="model-panel"):
                self._build_panel(labels)

    def _build_library(self, labels: Labels) -> None:
        labels(gr.Markdown, value=Key("models.intro"), elem_classes="intro")
        self.library = gr.Dataframe(
            headers=[labels.tr(f"models.col.{c}") for c in COLUMNS],
            value=[],
            interactive=False,
            wrap=True,
            elem_id="library",
            max_height=420,
        )
        with gr.Row():
            self.refresh = labels(gr.Button, value=Key("models.refresh"), size="sm", scale=0)
            self.add_path = labels.bare_textbox(Key("models.add_placeholder"), scale=4)
            self.add = labels(gr.Button, value=Key("models.add"), size="sm", scale=0)
        with labels(gr.Accordion, label=Key("models.download"), open=True):
            with gr.Row(equal_height=True):
                self.repo_id = labels.bare_textbox(
                    Key("models.repo_placeholder"), scale=4, elem_id="repo-id"
                )
                self.download = labels(gr.Button, value=Key("models.download_button"), scale=1)
            self.download_status = gr.HTML("", elem_id="download-status")

    def _build_panel(self, labels: Labels) -> None:
        self.selected = labels(
            gr.Textbox,
            label=Key("models.selected"),
            placeholder=Key("models.selected_placeholder"),
            elem_id="selected-model",
        )
        self.details = gr.Markdown("", elem_id="model-details")
        with labels(gr.Accordion, label=Key("models.placement"), open=True):
            self._build_placement(labels)
        with gr.Row():
            self.load = labels(
                gr.Button, value=Key("models.load"), variant="primary", elem_id="load"
            )
            self.unload = labels(gr.Button, value=Key("models.unload"), elem_id="unload")
            self.delete = labels(gr.Button, value=Key("models.delete"), elem_id="delete-model")
        self.confirm_delete = labels(
            gr.Button, value=Key("models.confirm_delete"), variant="stop", visible=False
        )

    def _build_placement(self, labels: Labels) -> None:
        engines = [
            (Key("models.engine.auto"), "auto"),
            ("torch", "torch"),
            ("llama.cpp", "llamacpp"),
        ]
        self.engine = labels(
            gr.Dropdown, choices=engines, value="auto", label=Key("models.engine"), elem_id="engine"
        )
        auto_zero, auto_minus = Key("models.auto_zero"), Key("models.auto_minus")
        with gr.Row():
            self.context_length = labels(
                gr.Number, value=0, precision=0, label=Key("models.context"), info=auto_zero
            )
            self.gpu_layers = labels(
                gr.Number, value=-1, precision=0, label=Key("models.gpu_layers"), info=auto_minus
            )
        with gr.Row():
            self.cpu_moe_layers = labels(
                gr.Number, value=-1, precision=0, label=Key("models.cpu_moe"), info=auto_minus
            )
            self.expert_cache_gb = labels(
                gr.Number, value=0, label=Key("models.expert_cache"), info=auto_zero
            )
        self.plan = gr.Markdown("", elem_id="plan")

    @property
    def placement(self) -> list:
        """The inputs `load_options` reads, in its order."""
        return [self.context_length, self.gpu_layers, self.cpu_moe_layers, self.expert_cache_gb]

    @property
    def translated_outputs(self) -> list:
        return [self.library]

    def translated_values(self, tr: Translator) -> list:
        return [library_update(self.ctx, tr)]

    # -- events ----------------------------------------------------------------------

    def wire(self, lang: gr.State, tabs: gr.Tabs) -> None:
        self.refresh.click(self.on_refresh, [lang], [self.library])
        choice = [lang, self.engine, *self.placement]
        self.library.select(self.on_select, choice, [self.selected, self.details, self.plan])
        for component in (self.engine, *self.placement):
            component.change(
                self.on_replan, [self.selected, *choice], [self.plan], show_progress="hidden"
            )
        self.load.click(self.on_load, [self.selected, *choice], [tabs])
        self.unload.click(self.on_unload, [lang], None)
        for trigger in (self.add.click, self.add_path.submit):
            trigger(self.on_add, [self.add_path, lang], [self.library, self.add_path])
        self.delete.click(self.on_ask_delete, [self.selected], [self.confirm_delete])
        deleted = [self.confirm_delete, self.library, self.selected, self.details]
        self.confirm_delete.click(self.on_delete, [self.selected, lang], deleted)
        for trigger in (self.download.click, self.repo_id.submit):
            trigger(
                self.on_download,
                [self.repo_id, lang],
                [self.download_status, self.library],
                show_progress="hidden",
            )

    def on_refresh(self, lang: str):
        return library_update(self.ctx, Translator(lang))

    def on_select(self, evt: gr.SelectData, lang: str, engine: str, *placement):
        tr = Translator(lang)
        key = evt.row_value[-1] if evt.row_value else ""
        entry = find_entry(self.ctx, key)
        options = load_options(*placement)
        return key, details_markdown(entry, tr), plan_markdown(entry, engine, options, tr)

    def on_replan(self, key: str, lang: str, engine: str, *placement):
        entry = find_entry(self.ctx, key)
        return plan_markdown(entry, engine, load_options(*placement), Translator(lang))

    def on_load(self, key: str, lang: str, engine: str, *placement):
        tr = Translator(lang)
        source = key.strip()
        if not source:
            gr.Warning(tr("models.pick_first"))
            return gr.skip()
        self.ctx.manager.load(source, engine, **load_options(*placement))
        entry = find_entry(self.ctx, source)
        gr.Info(tr("models.loading_started", source=entry.name if entry else source))
        return gr.Tabs(selected="chat")

    def on_unload(self, lang: str):
        threading.Thread(target=self.ctx.manager.unload, daemon=True).start()
        gr.Info(Translator(lang)("models.unloaded"))

    def on_add(self, path_text: str, lang: str):
        tr = Translator(lang)
        path = Path(path_text.strip()).expanduser()
        if not path_text.strip() or not library._is_model(path):
            gr.Warning(tr("models.not_a_model", path=str(path)))
            return gr.skip(), gr.skip()
        settings = self.ctx.settings.load()
        if str(path) not in settings.added_paths:
            self.ctx.settings.update(added_paths=[*settings.added_paths, str(path.resolve())])
        return library_update(self.ctx, tr), ""

    def on_ask_delete(self, key: str):
        # Deleting is two clicks: the confirmation only appears once a model is selected.
        return gr.update(visible=bool(key))

    def on_delete(self, key: str, lang: str):
        tr = Translator(lang)
        entry = find_entry(self.ctx, key)
        hidden = gr.update(visible=False)
        if entry is None:
            return hidden, gr.skip(), gr.skip(), gr.skip()
        if self.ctx.manager.status.source == key:
            self.ctx.manager.unload()
        try:
            what = library.delete(entry, self.ctx.settings.models_dir())
        except ItamaeError as e:
            gr.Warning(str(e))
            return hidden, gr.skip(), gr.skip(), gr.skip()
        if what == "forgotten" or entry.location == "added":
            settings = self.ctx.settings.load()
            self.ctx.settings.update(added_paths=[p for p in settings.added_paths if p != key])
        gr.Info(tr(f"models.{what}", name=entry.name))
        return hidden, library_update(self.ctx, tr), "", ""

    def on_download(self, repo_id: str, lang: str):
        tr = Translator(lang)
        progress = library.DownloadProgress()
        models_dir = self.ctx.settings.models_dir()
        models_dir.mkdir(parents=True, exist_ok=True)
        worker = threading.Thread(
            target=library.download, args=(repo_id, models_dir, progress), daemon=True
        )
        worker.start()
        while not progress.finished:
            yield download_html(progress, repo_id, tr), gr.skip()
            time.sleep(DOWNLOAD_POLL_S)
        yield download_html(progress, repo_id, tr), library_update(self.ctx, tr)
