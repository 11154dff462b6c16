"""The Gradio UI: a header with the model's state and the language switch, the
conversation sidebar, and one tab per `ui_<tab>.py` (chat, models, convert, settings).

Each tab module has `create_ui(...)` (components, returned as a dataclass) and
`create_event_handlers(...)` (wiring), the split text-generation-webui uses. What a
browser tab owns (its open conversation, its language) is in gr.State; everything
shared (the model, the store, settings) comes in through `AppContext`.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path

import gradio as gr

from app import ui_chat, ui_conversations, ui_convert, ui_models, ui_settings
from app.context import AppContext
from app.i18n import LANGUAGES, Key, Labels, Translator, normalize, pick_language
from app.ui_conversations import ChatSession

ASSETS = Path(__file__).resolve().parent.parent / "assets"
STATUS_POLL_S = 1.0  # how often the header asks the model manager how loading goes


def theme() -> gr.themes.Base:
    # System and Noto fonts only: the default theme would fetch Google Fonts, and
    # Itamae must work offline. Noto Sans CJK JP makes Japanese look right on Linux.
    fonts = ["Inter", "Noto Sans", "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic UI",
             "system-ui", "sans-serif"]  # fmt: skip
    mono = ["JetBrains Mono", "Noto Sans Mono", "ui-monospace", "monospace"]
    return gr.themes.Soft(
        primary_hue="indigo", secondary_hue="slate", neutral_hue="slate", font=fonts, font_mono=mono
    )


def status_html(
    status: dict, tr: Translator, info_line: str = "", loading_s: float | None = None
) -> str:
    """The header line: the model in use, its loading (with elapsed time), or what to do."""
    state = status.get("state", "empty")
    message = escape(status.get("message") or "")
    source = escape(status.get("source") or "")
    if state == "ready":
        engine = escape(status.get("engine") or "")
        detail = f'<span class="muted">{escape(info_line)}</span>' if info_line else ""
        demo = ""
        if status.get("source") == "demo":  # say what it is, and where real models come from
            message = escape(tr("status.demo_name"))
            demo = f'<div class="demo-note">{escape(tr("status.demo"))}</div>'
        return (
            f'<div class="model-status ready" data-state="ready"><span class="dot"></span>'
            f'<b>{message}</b> <span class="chip">{engine}</span> {detail}{demo}</div>'
        )
    if state == "loading":
        progress = status.get("progress")
        bar = (
            f'<div class="bar"><div style="width:{progress * 100:.0f}%"></div></div>'
            if progress
            else '<div class="bar indeterminate"><div></div></div>'
        )
        elapsed = (
            f' <span class="muted">{escape(tr("status.elapsed", s=f"{loading_s:.0f}"))}</span>'
            if loading_s is not None
            else ""
        )
        return (
            f'<div class="model-status loading" data-state="loading"><span class="dot"></span>'
            f"{escape(tr('status.loading', source=status.get('source') or ''))}{elapsed}{bar}</div>"
        )
    if state == "error":
        return (
            f'<div class="model-status error" data-state="error"><span class="dot"></span>'
            f"<b>{escape(tr('status.error'))}</b> {message} "
            f'<span class="muted">{source}</span></div>'
        )
    return (
        f'<div class="model-status empty" data-state="empty"><span class="dot"></span>'
        f"<b>{escape(tr('status.empty'))}</b> {escape(tr('status.empty_hint'))}</div>"
    )


def model_status(ctx: AppContext) -> dict:
    """The manager's status, with the engine that actually runs the model ("auto" is
    what was asked for; the backend's package says what it became)."""
    status = ctx.manager.status
    backend = ctx.manager.backend
    if status["state"] == "ready" and backend is not None:
        package = type(backend).__module__.split(".")
        if len(package) > 1 and package[0] == "engine":
            status["engine"] = package[1]
    return status


def model_line(ctx: AppContext, tr: Translator) -> str:
    """One line about the loaded model: arch, experts, active parameters."""
    backend = ctx.manager.backend
    info = getattr(backend, "info", None)
    if info is None:
        return ""
    parts = [info.arch]
    if info.n_experts:
        parts.append(tr("status.experts", n=info.n_experts, k=info.experts_per_token))
    if info.active_params:
        parts.append(tr("status.active", active=ui_models.human_count(info.active_params)))
    return " · ".join(p for p in parts if p)


def build_ui(ctx: AppContext, labels: Labels | None = None) -> gr.Blocks:
    labels = labels or Labels()
    with gr.Blocks(title="Itamae", fill_width=True, analytics_enabled=False) as demo:
        lang = gr.State("en")
        lang_pref = gr.BrowserState("", storage_key="itamae-language")
        session = gr.State(ChatSession())
        sidebar = ui_conversations.create_ui(labels)
        with gr.Row(elem_id="header", equal_height=True):
            status = gr.HTML(status_html(model_status(ctx), labels.tr), elem_id="model-status")
            language = gr.Radio(
                [(name, code) for code, name in LANGUAGES.items()],
                value="en",
                show_label=False,
                container=False,
                elem_id="language",
                scale=0,
                min_width=170,
            )
        with gr.Tabs(elem_id="tabs") as tabs:
            with labels(gr.Tab, label=Key("tab.chat"), id="chat", elem_id="tab-chat"):
                chat = ui_chat.create_ui(ctx, labels)
            with labels(
                gr.Tab, label=Key("tab.models"), id="models", elem_id="tab-models"
            ) as models_tab:
                models = ui_models.create_ui(ctx, labels)
            with labels(
                gr.Tab, label=Key("tab.convert"), id="convert", elem_id="tab-convert"
            ) as convert_tab:
                convert = ui_convert.create_ui(ctx, labels)
            with labels(gr.Tab, label=Key("tab.settings"), id="settings", elem_id="tab-settings"):
                settings = ui_settings.create_ui(ctx, labels)
        timer = gr.Timer(STATUS_POLL_S)
        loaded_source = gr.State(None)

        def open_chat(session, conversation_id, lang):
            return ui_chat.open_conversation(ctx, session, conversation_id, lang)

        chat_outputs = ui_chat.open_outputs(chat, session)
        ui_conversations.create_event_handlers(ctx, sidebar, session, lang, chat_outputs, open_chat)
        ui_chat.create_event_handlers(
            ctx, chat, session, lang, sidebar.conversations, sidebar.search
        )
        ui_models.create_event_handlers(ctx, models, lang, tabs)
        ui_convert.create_event_handlers(ctx, convert, lang, models)
        ui_settings.create_event_handlers(ctx, settings, lang)
        # A fresh look at the disk whenever a tab that lists models is opened (also, a
        # table filled while its tab was hidden is only drawn right when redrawn visible).
        models_tab.select(
            lambda code: ui_models.library_update(ctx, Translator(code)),
            [lang],
            [models.library],
            show_progress="hidden",
        )
        convert_tab.select(
            lambda code: ui_convert.translated_values(ctx, Translator(code))[0],
            [lang],
            [convert.source],
            show_progress="hidden",
        )

        # -- language: the browser's, unless the person chose one with the switch -----
        relabel_outputs = [
            lang,
            language,
            *labels.components,
            *chat_outputs,
            chat.preset,
            status,
            *models.translated_outputs,
            *convert.translated_outputs,
        ]

        def relabel(session: ChatSession, code: str):
            tr = Translator(code)
            return [
                code,
                code,
                *labels.updates(code),
                *open_chat(session, session.conversation_id, code),
                gr.update(choices=ui_chat.preset_choices(ctx, tr)),
                status_html(model_status(ctx), tr, model_line(ctx, tr)),
                *ui_models.translated_values(ctx, tr),
                *ui_convert.translated_values(ctx, tr),
            ]

        def on_load(saved: str, session: ChatSession, request: gr.Request):
            header = request.headers.get("accept-language") if request else None
            code = normalize(saved) if saved else pick_language(header)
            return [*relabel(session, code), ui_conversations.list_update(ctx, session)]

        demo.load(
            on_load,
            [lang_pref, session],
            [*relabel_outputs, sidebar.conversations],
            show_progress="hidden",
        )

        def on_switch(code: str, session: ChatSession):
            return [*relabel(session, code), code]

        language.input(on_switch, [language, session], [*relabel_outputs, lang_pref])

        # -- the model's state, polled while the page is open -------------------------
        def on_tick(lang: str, seen):
            """`seen`: (state, source, engine) last shown, and when that state began."""
            tr = Translator(lang)
            status = model_status(ctx)
            key = (status["state"], status.get("source"), status.get("engine"))
            if seen and tuple(seen[0]) == key:
                since = seen[1]
                elapsed = time.time() - since if status["state"] == "loading" else None
                return status_html(status, tr, model_line(ctx, tr), elapsed), *(gr.skip(),) * 3
            html = status_html(status, tr, model_line(ctx, tr), 0.0)
            info = getattr(ctx.manager.backend, "info", None)
            k_max = max(info.n_experts, 1) if info is not None and info.n_experts else 16
            slider = gr.update(maximum=k_max, value=0)
            return html, slider, (key, time.time()), ui_models.library_update(ctx, tr)

        timer.tick(
            on_tick,
            [lang, loaded_source],
            [status, chat.experts_per_token, loaded_source, models.library],
            show_progress="hidden",
        )
    return demo


def css() -> str:
    return (ASSETS / "itamae.css").read_text(encoding="utf-8")
