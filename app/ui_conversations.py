"""The conversation sidebar: new, open, search, rename, delete, export.

Conversations live in the SQLite store (app/store.py); which one a browser tab has
open is that tab's own `ChatSession` in gr.State, so two tabs never write into each
other's conversation.
"""

from __future__ import annotations

import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from app.context import AppContext
from app.i18n import Key, Labels, Translator
from app.store import export_json, export_markdown


@dataclass
class ChatSession:
    """One browser tab's chat: its open conversation and the Stop switch of its reply."""

    conversation_id: str | None = None
    cancel: threading.Event | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.cancel is not None:
            self.cancel.set()


@dataclass
class SidebarUI:
    new_chat: gr.Button
    search: gr.Textbox
    conversations: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm_delete: gr.Button
    export_md: gr.Button
    export_json: gr.Button
    export_file: gr.File


def create_ui(labels: Labels) -> SidebarUI:
    with labels(gr.Sidebar, label=Key("sidebar.title"), open=True, width=290):
        gr.HTML('<div class="brand"><img src="/itamae-assets/icon.svg" alt=""> Itamae</div>')
        new_chat = labels(
            gr.Button, value=Key("sidebar.new"), variant="primary", elem_id="new-chat", size="md"
        )
        search = labels(
            gr.Textbox,
            placeholder=Key("sidebar.search"),
            show_label=False,
            container=False,
            elem_id="conversation-search",
        )
        conversations = gr.Radio(
            choices=[], show_label=False, container=False, elem_id="conversation-list"
        )
        with labels(gr.Accordion, label=Key("sidebar.manage"), open=False, elem_id="manage"):
            title = labels(gr.Textbox, label=Key("sidebar.rename_label"), elem_id="rename-title")
            with gr.Row():
                rename = labels(gr.Button, value=Key("sidebar.rename"), size="sm")
                delete = labels(gr.Button, value=Key("sidebar.delete"), size="sm")
            # Deleting is two clicks: the second button only appears after the first.
            confirm_delete = labels(
                gr.Button,
                value=Key("sidebar.confirm_delete"),
                size="sm",
                variant="stop",
                visible=False,
                elem_id="confirm-delete",
            )
            with gr.Row():
                export_md = labels(gr.Button, value=Key("sidebar.export_md"), size="sm")
                export_json_btn = labels(gr.Button, value=Key("sidebar.export_json"), size="sm")
            export_file = gr.File(visible=False, show_label=False, elem_id="export-file")
    return SidebarUI(
        new_chat,
        search,
        conversations,
        title,
        rename,
        delete,
        confirm_delete,
        export_md,
        export_json_btn,
        export_file,
    )


def conversation_choices(ctx: AppContext, query: str = "") -> list[tuple[str, str]]:
    return [(c.title or "…", c.id) for c in ctx.store.conversations(query)]


def list_update(ctx: AppContext, session: ChatSession, query: str = "") -> dict:
    choices = conversation_choices(ctx, query)
    ids = {cid for _, cid in choices}
    value = session.conversation_id if session.conversation_id in ids else None
    return gr.update(choices=choices, value=value)


def _export(ctx: AppContext, session: ChatSession, lang: str, kind: str):
    tr = Translator(lang)
    if not session.conversation_id:
        gr.Warning(tr("sidebar.nothing_to_export"))
        return gr.update(visible=False)
    data = ctx.store.export(session.conversation_id)
    if kind == "md":
        names = {
            "user": tr("role.user"),
            "assistant": tr("role.assistant"),
            "system": tr("role.system"),
        }
        text, suffix = export_markdown(data, names), ".md"
    else:
        text, suffix = export_json(data), ".json"
    # A file name from the title, safe on every OS; Gradio serves it from its temp dir.
    stem = re.sub(r"[^\w\- ]+", "", data.conversation.title, flags=re.UNICODE).strip()[:40]
    folder = Path(tempfile.mkdtemp(prefix="itamae-export-"))
    path = folder / f"{stem or 'conversation'}{suffix}"
    path.write_text(text, encoding="utf-8")
    return gr.update(value=str(path), visible=True)


def create_event_handlers(
    ctx: AppContext,
    ui: SidebarUI,
    session: gr.State,
    lang: gr.State,
    open_outputs: list,
    open_conversation,
):
    """`open_conversation(session, conversation_id, lang)` returns values for
    `open_outputs` (the chat tab's view of a conversation); the sidebar calls it when a
    conversation is picked, created or deleted."""

    def on_search(query, session):
        return list_update(ctx, session, query)

    ui.search.change(on_search, [ui.search, session], [ui.conversations], show_progress="hidden")

    def on_pick(conversation_id, session, lang):
        conv = ctx.store.get(conversation_id) if conversation_id else None
        title = conv.title if conv else ""
        return (*open_conversation(session, conversation_id, lang), title)

    ui.conversations.input(
        on_pick,
        [ui.conversations, session, lang],
        [*open_outputs, ui.title],
        show_progress="hidden",
    )

    def on_new(session, lang, query):
        session.stop()
        return (*open_conversation(session, None, lang), "", list_update(ctx, session, query))

    ui.new_chat.click(
        on_new, [session, lang, ui.search], [*open_outputs, ui.title, ui.conversations]
    )

    def on_rename(title, session, lang, query):
        tr = Translator(lang)
        if not session.conversation_id:
            gr.Warning(tr("sidebar.nothing_selected"))
        elif not title.strip():
            gr.Warning(tr("sidebar.title_needed"))
        else:
            ctx.store.rename(session.conversation_id, title)
        return list_update(ctx, session, query)

    ui.rename.click(on_rename, [ui.title, session, lang, ui.search], [ui.conversations])
    ui.title.submit(on_rename, [ui.title, session, lang, ui.search], [ui.conversations])

    def on_delete(session, lang, query):
        if session.conversation_id:
            session.stop()
            ctx.store.delete(session.conversation_id)
        return (*open_conversation(session, None, lang), "", list_update(ctx, session, query))

    ui.delete.click(
        lambda s: gr.update(visible=bool(s.conversation_id)), [session], [ui.confirm_delete]
    )
    ui.confirm_delete.click(
        on_delete, [session, lang, ui.search], [*open_outputs, ui.title, ui.conversations]
    ).then(lambda: gr.update(visible=False), None, [ui.confirm_delete])

    ui.export_md.click(
        lambda s, lang: _export(ctx, s, lang, "md"), [session, lang], [ui.export_file]
    )
    ui.export_json.click(
        lambda s, lang: _export(ctx, s, lang, "json"), [session, lang], [ui.export_file]
    )
