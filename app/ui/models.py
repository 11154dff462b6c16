"""The models tab: what is on this machine, what each model is, load and unload with
an engine and a placement, search the hub (only when asked), download one quant into the
Hugging Face cache with progress and cancel, delete.

How the library and a model's facts look is app/ui/library_view.py; this module builds
the tab and answers its events.
"""

from __future__ import annotations

import threading
import time
from html import escape
from pathlib import Path

import gradio as gr

from app import library
from app.context import AppContext
from app.i18n import Translator
from app.library import hub_search
from app.library.downloads import is_network_error, parse_spec
from app.ui.hub_view import hub_headers, hub_rows, quant_choices
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
        self._downloads: dict[str, library.DownloadProgress] = {}
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
        with labels(gr.Accordion, label=Key("models.hub_search"), open=False):
            self._build_hub_search(labels)
        with labels(gr.Accordion, label=Key("models.download"), open=True):
            with gr.Row(equal_height=True):
                self.repo_id = labels.bare_textbox(
                    Key("models.repo_placeholder"), scale=4, elem_id="repo-id"
                )
                self.download = labels(gr.Button, value=Key("models.download_button"), scale=1)
                self.cancel_download = labels(
                    gr.Button,
                    value=Key("models.download_cancel"),
                    scale=0,
                    elem_id="download-cancel",
                )
            self.download_status = gr.HTML("", elem_id="download-status")

    def _build_hub_search(self, labels: Labels) -> None:
        with gr.Row(equal_height=True):
            self.hub_query = labels.bare_textbox(
                Key("models.hub_placeholder"), scale=4, elem_id="hub-query"
            )
            formats = [(Key("models.hub_format.any"), ""), ("GGUF", "gguf")]
            formats.append(("safetensors", "safetensors"))
            self.hub_format = labels(
                gr.Dropdown,
                choices=formats,
                value="",
                label=Key("models.hub_format"),
                scale=1,
                elem_id="hub-format",
            )
            self.hub_moe = labels(
                gr.Checkbox, label=Key("models.hub_moe"), scale=1, elem_id="hub-moe"
            )
            self.hub_search = labels(
                gr.Button, value=Key("models.hub_search_button"), scale=0, elem_id="hub-search"
            )
        self.hub_status = gr.HTML("", elem_id="hub-status")
        self.hub_results = gr.Dataframe(
            headers=hub_headers(labels.tr), value=[], interactive=False, elem_id="hub-results"
        )
        self.hub_quants = labels(
            gr.Dropdown, choices=[], label=Key("models.hub_quants"), elem_id="hub-quants"
        )

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
        self.cancel_download.click(self.on_cancel_download, [self.repo_id], None)
        for trigger in (self.hub_search.click, self.hub_query.submit):
            trigger(
                self.on_hub_search,
                [self.hub_query, self.hub_format, self.hub_moe, lang],
                [self.hub_results, self.hub_status],
            )
        self.hub_results.select(
            self.on_hub_pick, [lang], [self.hub_quants, self.repo_id, self.hub_status]
        )
        self.hub_quants.change(lambda spec: spec or gr.skip(), [self.hub_quants], [self.repo_id])

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
        entry = find_entry(self.ctx, source)
        if entry is not None and entry.kind == "projector":
            gr.Warning(tr("models.projector_not_chat", name=entry.name))
            return gr.skip()
        # by its library name: the one the API and every command know it by
        name = entry.name if entry else source
        self.ctx.manager.load(name, engine, **load_options(*placement))
        gr.Info(tr("models.loading_started", source=name))
        return gr.Tabs(selected="chat")

    def on_unload(self, lang: str):
        threading.Thread(target=self.ctx.manager.unload, daemon=True).start()
        gr.Info(Translator(lang)("models.unloaded"))

    def on_add(self, path_text: str, lang: str):
        tr = Translator(lang)
        path = Path(path_text.strip()).expanduser()
        if not path_text.strip() or not library.is_model(path):
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
        if self.ctx.manager.status.source in (key, entry.name):
            self.ctx.manager.unload()
        try:
            what = library.delete(entry, self.ctx.settings.models_dir())
        except ItamaeError as e:
            gr.Warning(str(e))
            return hidden, gr.skip(), gr.skip(), gr.skip()
        if what == "forgotten":
            settings = self.ctx.settings.load()
            self.ctx.settings.update(added_paths=[p for p in settings.added_paths if p != key])
        gr.Info(tr(f"models.{what}", name=entry.name))
        return hidden, library_update(self.ctx, tr), "", ""

    def on_download(self, spec: str, lang: str):
        tr = Translator(lang)
        spec = spec.strip()
        progress = library.DownloadProgress()
        # Downloads belong to the machine (its cache), not to one browser tab: any tab
        # may cancel one, so they are kept here by what was asked for.
        self._downloads[spec] = progress
        worker = threading.Thread(target=library.download, args=(spec, progress), daemon=True)
        worker.start()
        try:
            while not progress.finished:
                yield download_html(progress, spec, tr), gr.skip()
                time.sleep(DOWNLOAD_POLL_S)
        finally:
            self._downloads.pop(spec, None)
        yield download_html(progress, spec, tr), library_update(self.ctx, tr)

    def on_cancel_download(self, spec: str):
        progress = self._downloads.get(spec.strip())
        if progress is not None:
            progress.cancel.set()

    def on_hub_search(self, query: str, fmt: str, moe_only: bool, lang: str):
        """Only here does the tab reach the hub: the person pressed Search."""
        tr = Translator(lang)
        try:
            found = hub_search.search(query, fmt=fmt or None, moe_only=moe_only)
        except Exception as e:  # offline, a proxy, the hub down: said in the tab
            return gr.skip(), download_html(_failed(e), query, tr)
        status = (
            ""
            if found
            else f'<div class="notice">{escape(tr("models.hub_none", query=query))}</div>'
        )
        return gr.update(value=hub_rows(found), headers=hub_headers(tr)), status

    def on_hub_pick(self, evt: gr.SelectData, lang: str):
        repo_id = evt.row_value[0] if evt.row_value else ""
        if not repo_id:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            choices = quant_choices(repo_id, hub_search.quants(parse_spec(repo_id)[0]))
        except Exception as e:
            return gr.skip(), gr.skip(), download_html(_failed(e), repo_id, Translator(lang))
        first = choices[0][1] if choices else repo_id
        return gr.update(choices=choices, value=first), first, ""


def _failed(error: Exception) -> library.DownloadProgress:
    """A finished DownloadProgress carrying `error` the way a download reports it."""
    progress = library.DownloadProgress(finished=True)
    progress.error = "offline" if is_network_error(error) else str(error)
    return progress
