"""How the models on this machine look in the UI: the library table, one model's facts,
its automatic placement, and a download's progress.

Shared by the models tab (app/ui/models.py) and the convert tab, which lists the same
library as its sources. The facts come from `library.scan` (app/library/, which asks
converters' inspect) and app/model_facts.py; nothing here reads a model file itself.
"""

from __future__ import annotations

from html import escape

import gradio as gr

from app import library
from app.context import AppContext
from app.i18n import Translator
from app.library.progress import human_bytes
from app.model_facts import openness_markdown, quality_markdown
from converters.core.errors import ItamaeError
from converters.formats.detect import is_gguf_file

# The last column is the path: shown (people like to know where a model is), and read
# back when a row is selected.
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


def human_count(n: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def scan_library(ctx: AppContext) -> list[library.LibraryEntry]:
    settings = ctx.settings.load()
    return library.scan(
        ctx.settings.models_dir(settings), settings.added_paths, ctx.manager.status.source
    )


def find_entry(ctx: AppContext, key: str) -> library.LibraryEntry | None:
    """The entry a row's key (its path) names: the places are listed (fast) and only this
    model is inspected, so a click does not wait for every model's headers."""
    settings = ctx.settings.load()
    found = library.find(
        ctx.settings.models_dir(settings), settings.added_paths, ctx.manager.status.source
    )
    match = next((f for f in found if str(f.path) == key), None)
    return library.entry(match) if match else None


def library_row(entry: library.LibraryEntry, tr: Translator, loaded: str | None) -> list:
    info = entry.info
    name = entry.name + ("  ●" if loaded in (entry.name, str(entry.path)) else "")
    where = tr(f"models.where.{entry.source}")
    if info is None:
        size = human_bytes(library.size_on_disk(entry.path, entry.files))
        problem = entry.problem or tr("models.not_inspected")
        return [name, where, problem, "", "", "", size, "", "", entry.key]
    params = f"{human_count(info.total_params)} / {human_count(info.active_params)}"
    return [
        name,
        where,
        info.arch,
        tr("models.projector") if entry.kind == "projector" else _experts_cell(info, tr),
        params,
        info.quant,
        human_bytes(info.size_bytes or library.size_on_disk(entry.path, entry.files)),
        f"{info.context_length:,}" if info.context_length else "",
        info.license,
        entry.key,
    ]


def _experts_cell(info, tr: Translator) -> str:
    if not info.n_experts:
        return tr("models.dense")
    shared = f" +{info.n_shared_experts}" if info.n_shared_experts else ""
    return f"{info.n_experts} / {info.experts_per_token}{shared}"


def library_update(ctx: AppContext, tr: Translator) -> dict:
    loaded = ctx.manager.status.source
    rows = [library_row(e, tr, loaded) for e in scan_library(ctx)]
    headers = [tr(f"models.col.{c}") for c in COLUMNS]
    return gr.update(value={"data": rows, "headers": headers}, headers=headers)


def details_markdown(entry: library.LibraryEntry | None, tr: Translator) -> str:
    if entry is None:
        return ""
    info = entry.info
    lines = [f"### {entry.name}", f"`{entry.path}`", ""]
    if info is None:
        lines.append(entry.problem or tr("models.not_inspected"))
        return "\n".join(lines)
    lines += [f"| {tr('models.fact')} | {tr('models.value')} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _facts(info, tr) if v not in ("", 0, None)]
    if info.bits_per_weight:
        bpw = ", ".join(f"{group} {bits:.2f}" for group, bits in info.bits_per_weight.items())
        lines += ["", f"**{tr('models.bpw')}:** {bpw}"]
    lines += ["", openness_markdown(entry.path, tr), "", quality_markdown(entry.path, tr)]
    return "\n".join(lines)


def _facts(info, tr: Translator) -> list[tuple[str, object]]:
    if info.n_experts:
        shared = f", {info.n_shared_experts} {tr('models.shared')}" if info.n_shared_experts else ""
        experts = f"{info.n_experts} × top-{info.experts_per_token}{shared}"
    else:
        experts = tr("models.dense")
    return [
        (tr("models.col.arch"), info.arch),
        (tr("models.format"), info.format),
        (tr("models.layers"), info.n_layers),
        (tr("models.col.experts"), experts),
        (tr("models.total"), human_count(info.total_params)),
        (tr("models.active"), human_count(info.active_params)),
        (tr("models.col.quant"), info.quant),
        (tr("models.col.size"), human_bytes(info.size_bytes)),
        (tr("models.col.context"), f"{info.context_length:,}" if info.context_length else ""),
        (tr("models.col.license"), info.license),
    ]


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
    # Here, not at the top: the llama.cpp backend imports llama_cpp, which the UI
    # should not pay for before a GGUF is picked.
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
    if progress.error == "cancelled":
        return f'<div class="notice">{escape(tr("models.cancelled", repo=repo_id))}</div>'
    if progress.error:
        return f'<div class="notice error">{escape(_download_error(progress.error, repo_id, tr))}</div>'
    if progress.finished:
        return f'<div class="notice ok">{escape(tr("models.downloaded", repo=repo_id))}</div>'
    fraction = progress.fraction
    width = f"{fraction * 100:.0f}%" if fraction else "0%"
    eta = progress.eta_s
    label = tr(
        "models.downloading",
        repo=repo_id,
        quant=progress.label or "…",
        done=human_bytes(progress.done_bytes),
        total=human_bytes(progress.total_bytes) if progress.total_bytes else "?",
        speed=human_bytes(progress.speed),
        eta="?" if eta is None else f"{eta:.0f} s",
    )
    return (
        f'<div class="download"><div>{escape(label)}</div>'
        f'<div class="bar"><div style="width:{width}"></div></div></div>'
    )


def _download_error(error: str, repo_id: str, tr: Translator) -> str:
    if error == "offline":
        return tr("models.offline")
    if error.startswith("not-found"):
        return tr("models.not_found", repo=repo_id)
    return error
