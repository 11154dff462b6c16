"""The models tab: what is on this machine, what each model is, load and unload with
an engine and a placement, download from the hub, delete.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

import gradio as gr

from app import library
from app.context import AppContext
from app.i18n import Key, Labels, Translator
from app.model_facts import openness_markdown, quality_markdown
from converters.core.errors import ItamaeError
from converters.formats.detect import is_gguf_file

ENGINES = ("auto", "torch", "llamacpp")
COLUMNS = (
    "name",
    "where",
    "arch",
    "experts",
    "params",
    "quant",
    "size",
    "context",
    "license",
    "path",
)
# The last column is the path: shown (people like to know where a model is), and read
# back when a row is selected.
DOWNLOAD_POLL_S = 0.5


def human_count(n: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass
class ModelsUI:
    library: gr.Dataframe
    refresh: gr.Button
    selected: gr.Textbox
    details: gr.Markdown
    engine: gr.Dropdown
    context_length: gr.Number
    gpu_layers: gr.Number
    cpu_moe_layers: gr.Number
    expert_cache_gb: gr.Number
    plan: gr.Markdown
    load: gr.Button
    unload: gr.Button
    delete: gr.Button
    confirm_delete: gr.Button
    add_path: gr.Textbox
    add: gr.Button
    repo_id: gr.Textbox
    download: gr.Button
    download_status: gr.HTML

    @property
    def translated_outputs(self) -> list:
        return [self.library]


def _row(entry: library.LibraryEntry, tr: Translator, loaded: str | None) -> list:
    info = entry.info
    name = entry.name + ("  ●" if loaded and Path(loaded).resolve() == entry.path.resolve() else "")
    where = tr(f"models.where.{entry.location}")
    if info is None:
        size = human_bytes(library.size_on_disk(entry.path))
        problem = entry.problem or tr("models.not_inspected")
        return [name, where, problem, "", "", "", size, "", "", entry.key]
    experts = (
        f"{info.n_experts} / {info.experts_per_token}"
        + (f" +{info.n_shared_experts}" if info.n_shared_experts else "")
        if info.n_experts
        else tr("models.dense")
    )
    params = f"{human_count(info.total_params)} / {human_count(info.active_params)}"
    return [
        name,
        where,
        info.arch,
        experts,
        params,
        info.quant,
        human_bytes(info.size_bytes or library.size_on_disk(entry.path)),
        f"{info.context_length:,}" if info.context_length else "",
        info.license,
        entry.key,
    ]


def scan_library(ctx: AppContext) -> list[library.LibraryEntry]:
    settings = ctx.settings.load()
    return library.scan(
        ctx.settings.models_dir(settings), settings.added_paths, ctx.manager.status.get("source")
    )


def library_update(ctx: AppContext, tr: Translator) -> dict:
    loaded = ctx.manager.status.get("source")
    rows = [_row(e, tr, loaded) for e in scan_library(ctx)]
    headers = [tr(f"models.col.{c}") for c in COLUMNS]
    return gr.update(value={"data": rows, "headers": headers}, headers=headers)


def translated_values(ctx: AppContext, tr: Translator) -> list:
    return [library_update(ctx, tr)]


def create_ui(ctx: AppContext, labels: Labels) -> ModelsUI:
    tr = labels.tr
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            labels(gr.Markdown, value=Key("models.intro"), elem_classes="intro")
            table = gr.Dataframe(
                headers=[tr(f"models.col.{c}") for c in COLUMNS],
                value=[],
                interactive=False,
                wrap=True,
                elem_id="library",
                max_height=420,
            )
            with gr.Row():
                refresh = labels(gr.Button, value=Key("models.refresh"), size="sm", scale=0)
                add_path = labels(
                    gr.Textbox, placeholder=Key("models.add_placeholder"), show_label=False,
                    container=False, scale=4,
                )  # fmt: skip
                add = labels(gr.Button, value=Key("models.add"), size="sm", scale=0)
            with labels(gr.Accordion, label=Key("models.download"), open=True):
                with gr.Row(equal_height=True):
                    repo_id = labels(
                        gr.Textbox, placeholder=Key("models.repo_placeholder"), show_label=False,
                        container=False, scale=4, elem_id="repo-id",
                    )  # fmt: skip
                    download = labels(gr.Button, value=Key("models.download_button"), scale=1)
                download_status = gr.HTML("", elem_id="download-status")
        with gr.Column(scale=2, min_width=320, elem_id="model-panel"):
            selected = labels(
                gr.Textbox, label=Key("models.selected"), placeholder=Key("models.selected_placeholder"),
                elem_id="selected-model",
            )  # fmt: skip
            details = gr.Markdown("", elem_id="model-details")
            with labels(gr.Accordion, label=Key("models.placement"), open=True):
                engine = labels(
                    gr.Dropdown,
                    choices=[
                        (Key("models.engine.auto"), "auto"),
                        ("torch", "torch"),
                        ("llama.cpp", "llamacpp"),
                    ],
                    value="auto",
                    label=Key("models.engine"),
                    elem_id="engine",
                )
                with gr.Row():
                    context_length = labels(
                        gr.Number,
                        value=0,
                        precision=0,
                        label=Key("models.context"),
                        info=Key("models.auto_zero"),
                    )
                    gpu_layers = labels(
                        gr.Number,
                        value=-1,
                        precision=0,
                        label=Key("models.gpu_layers"),
                        info=Key("models.auto_minus"),
                    )
                with gr.Row():
                    cpu_moe_layers = labels(
                        gr.Number,
                        value=-1,
                        precision=0,
                        label=Key("models.cpu_moe"),
                        info=Key("models.auto_minus"),
                    )
                    expert_cache_gb = labels(
                        gr.Number,
                        value=0,
                        label=Key("models.expert_cache"),
                        info=Key("models.auto_zero"),
                    )
                plan = gr.Markdown("", elem_id="plan")
            with gr.Row():
                load = labels(
                    gr.Button, value=Key("models.load"), variant="primary", elem_id="load"
                )
                unload = labels(gr.Button, value=Key("models.unload"), elem_id="unload")
                delete = labels(gr.Button, value=Key("models.delete"), elem_id="delete-model")
            confirm_delete = labels(
                gr.Button, value=Key("models.confirm_delete"), variant="stop", visible=False
            )
    return ModelsUI(
        table, refresh, selected, details, engine, context_length, gpu_layers, cpu_moe_layers,
        expert_cache_gb, plan, load, unload, delete, confirm_delete, add_path, add, repo_id,
        download, download_status,
    )  # fmt: skip


def _find(ctx: AppContext, key: str) -> library.LibraryEntry | None:
    return next((e for e in scan_library(ctx) if e.key == key), None)


def details_markdown(entry: library.LibraryEntry | None, tr: Translator) -> str:
    if entry is None:
        return ""
    info = entry.info
    lines = [f"### {entry.name}", f"`{entry.path}`", ""]
    if info is None:
        lines.append(entry.problem or tr("models.not_inspected"))
        return "\n".join(lines)
    facts = [
        (tr("models.col.arch"), info.arch),
        (tr("models.format"), info.format),
        (tr("models.layers"), info.n_layers),
        (
            tr("models.col.experts"),
            f"{info.n_experts} × top-{info.experts_per_token}"
            + (f", {info.n_shared_experts} {tr('models.shared')}" if info.n_shared_experts else "")
            if info.n_experts
            else tr("models.dense"),
        ),  # fmt: skip
        (tr("models.total"), human_count(info.total_params)),
        (tr("models.active"), human_count(info.active_params)),
        (tr("models.col.quant"), info.quant),
        (tr("models.col.size"), human_bytes(info.size_bytes)),
        (tr("models.col.context"), f"{info.context_length:,}" if info.context_length else ""),
        (tr("models.col.license"), info.license),
    ]
    lines += [f"| {tr('models.fact')} | {tr('models.value')} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts if v not in ("", 0, None)]
    if info.bits_per_weight:
        bpw = ", ".join(f"{group} {bits:.2f}" for group, bits in info.bits_per_weight.items())
        lines += ["", f"**{tr('models.bpw')}:** {bpw}"]
    lines += ["", openness_markdown(entry.path, tr), "", quality_markdown(entry.path, tr)]
    return "\n".join(lines)


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


def plan_markdown(
    entry: library.LibraryEntry | None, engine: str, options: dict, tr: Translator
) -> str:
    """The automatic placement, before loading: for a GGUF, llama.cpp's memory plan
    (engine/llamacpp/memory_plan.py) for this machine, with the person's choices applied."""
    if entry is None:
        return ""
    is_gguf = is_gguf_file(entry.path)
    if not is_gguf or engine == "torch":
        return tr("models.plan_torch")
    from engine.llamacpp.backend import plan_for
    from engine.llamacpp.gguf_layout import read_gguf

    wanted = {**options, "check_memory": False}
    if "context_length" in wanted:
        wanted["n_ctx"] = wanted.pop("context_length")
    try:
        plan = plan_for(read_gguf(entry.path), wanted)
    except ItamaeError as e:
        return f"⚠️ {e}"
    return f"**{tr('models.plan')}**\n\n```\n{plan.describe()}\n```"


def download_html(progress: library.DownloadProgress | None, repo_id: str, tr: Translator) -> str:
    if progress is None:
        return ""
    if progress.error:
        if progress.error == "offline":
            text = tr("models.offline")
        elif progress.error.startswith("not-found"):
            text = tr("models.not_found", repo=repo_id)
        else:
            text = progress.error
        return f'<div class="notice error">{escape(text)}</div>'
    if progress.finished:
        return f'<div class="notice ok">{escape(tr("models.downloaded", repo=repo_id))}</div>'
    fraction = progress.fraction
    width = f"{fraction * 100:.0f}%" if fraction else "0%"
    label = tr(
        "models.downloading",
        repo=repo_id,
        done=human_bytes(progress.done_bytes),
        total=human_bytes(progress.total_bytes) if progress.total_bytes else "?",
    )
    return (
        f'<div class="download"><div>{escape(label)}</div>'
        f'<div class="bar"><div style="width:{width}"></div></div></div>'
    )


def create_event_handlers(ctx: AppContext, ui: ModelsUI, lang: gr.State, tabs: gr.Tabs):
    ui.refresh.click(lambda lang: library_update(ctx, Translator(lang)), [lang], [ui.library])

    def on_select(evt: gr.SelectData, lang: str, engine: str, *placement):
        tr = Translator(lang)
        key = evt.row_value[-1] if evt.row_value else ""
        entry = _find(ctx, key)
        options = load_options(*placement)
        return key, details_markdown(entry, tr), plan_markdown(entry, engine, options, tr)

    placement = [ui.context_length, ui.gpu_layers, ui.cpu_moe_layers, ui.expert_cache_gb]
    ui.library.select(on_select, [lang, ui.engine, *placement], [ui.selected, ui.details, ui.plan])

    def on_replan(key: str, lang: str, engine: str, *placement):
        tr = Translator(lang)
        return plan_markdown(_find(ctx, key), engine, load_options(*placement), tr)

    for component in (ui.engine, *placement):
        component.change(
            on_replan, [ui.selected, lang, ui.engine, *placement], [ui.plan], show_progress="hidden"
        )

    def on_load(key: str, lang: str, engine: str, *placement):
        tr = Translator(lang)
        source = key.strip()
        if not source:
            gr.Warning(tr("models.pick_first"))
            return gr.skip()
        ctx.manager.load(source, engine, **load_options(*placement))
        entry = _find(ctx, source)
        gr.Info(tr("models.loading_started", source=entry.name if entry else source))
        return gr.Tabs(selected="chat")

    ui.load.click(on_load, [ui.selected, lang, ui.engine, *placement], [tabs])

    def on_unload(lang: str):
        threading.Thread(target=ctx.manager.unload, daemon=True).start()
        gr.Info(Translator(lang)("models.unloaded"))

    ui.unload.click(on_unload, [lang], None)

    def on_add(path_text: str, lang: str):
        tr = Translator(lang)
        path = Path(path_text.strip()).expanduser()
        if not path_text.strip() or not library._is_model(path):
            gr.Warning(tr("models.not_a_model", path=str(path)))
            return gr.skip(), gr.skip()
        settings = ctx.settings.load()
        if str(path) not in settings.added_paths:
            ctx.settings.update(added_paths=[*settings.added_paths, str(path.resolve())])
        return library_update(ctx, tr), ""

    ui.add.click(on_add, [ui.add_path, lang], [ui.library, ui.add_path])
    ui.add_path.submit(on_add, [ui.add_path, lang], [ui.library, ui.add_path])

    ui.delete.click(lambda key: gr.update(visible=bool(key)), [ui.selected], [ui.confirm_delete])

    def on_delete(key: str, lang: str):
        tr = Translator(lang)
        entry = _find(ctx, key)
        hidden = gr.update(visible=False)
        if entry is None:
            return hidden, gr.skip(), gr.skip(), gr.skip()
        if ctx.manager.status.get("source") == key:
            ctx.manager.unload()
        try:
            what = library.delete(entry, ctx.settings.models_dir())
        except ItamaeError as e:
            gr.Warning(str(e))
            return hidden, gr.skip(), gr.skip(), gr.skip()
        if what == "forgotten" or entry.location == "added":
            settings = ctx.settings.load()
            ctx.settings.update(added_paths=[p for p in settings.added_paths if p != key])
        gr.Info(tr(f"models.{what}", name=entry.name))
        return hidden, library_update(ctx, tr), "", ""

    ui.confirm_delete.click(
        on_delete, [ui.selected, lang], [ui.confirm_delete, ui.library, ui.selected, ui.details]
    )

    def on_download(repo_id: str, lang: str):
        tr = Translator(lang)
        progress = library.DownloadProgress()
        models_dir = ctx.settings.models_dir()
        models_dir.mkdir(parents=True, exist_ok=True)
        worker = threading.Thread(
            target=library.download, args=(repo_id, models_dir, progress), daemon=True
        )
        worker.start()
        while not progress.finished:
            yield download_html(progress, repo_id, tr), gr.skip()
            time.sleep(DOWNLOAD_POLL_S)
        yield download_html(progress, repo_id, tr), library_update(ctx, tr)

    ui.download.click(
        on_download, [ui.repo_id, lang], [ui.download_status, ui.library], show_progress="hidden"
    )
    ui.repo_id.submit(
        on_download, [ui.repo_id, lang], [ui.download_status, ui.library], show_progress="hidden"
    )
