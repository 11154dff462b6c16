"""The conversation sidebar: new, open, search (the first hits shown with the match
marked), import (app/conversation_import.py), rename, delete, export.

Conversations live in the SQLite store (app/store.py); which one a browser tab has
open is that tab's own `ChatSession` in gr.State, so two tabs never write into each
other's conversation.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import gradio as gr

from app.attachments import Attachment
from app.context import AppContext
from app.conversation_import import import_file
from app.i18n import Translator
from app.store import export_json, export_markdown, snippet_html
from app.ui.labels import Key, Labels
from converters.core.errors import ItamaeError

SEARCH_HITS_SHOWN = 8  # snippets under the search box; the list itself has every match


@dataclass
class ChatSession:
    """One browser tab's chat: its open conversation and the Stop switch of its reply."""

    conversation_id: str | None = None
    cancel: threading.Event | None = field(default=None, repr=False)
    branch_id: int | None = None  # the message whose alternatives "‹ 2 / 3 ›" steps through
    attachments: list[Attachment] = field(default_factory=list)  # for the next message

    def stop(self) -> None:
        if self.cancel is not None:
            self.cancel.set()


def conversation_choices(ctx: AppContext, query: str = "") -> list[tuple[str, str]]:
    return [(c.title or "…", c.id) for c in ctx.store.conversations(query)]


def list_update(ctx: AppContext, session: ChatSession, query: str = "") -> dict:
    choices = conversation_choices(ctx, query)
    ids = {cid for _, cid in choices}
    value = session.conversation_id if session.conversation_id in ids else None
    return gr.update(choices=choices, value=value)


def search_hits_html(ctx: AppContext, query: str) -> str:
    """The first hits of a search: the conversation's title and the marked snippet (the
    marked title alone when the title matched)."""
    if not query.strip():
        return ""
    titles = {c.id: c.title for c in ctx.store.conversations()}
    rows = []
    for hit in ctx.store.search(query, limit=SEARCH_HITS_SHOWN):
        if hit.message_id is None:
            rows.append(f'<div class="search-hit"><b>{snippet_html(hit.snippet)}</b></div>')
        else:
            title = escape(titles.get(hit.conversation_id, "…"))
            rows.append(
                f'<div class="search-hit"><b>{title}</b><div>{snippet_html(hit.snippet)}</div></div>'
            )
    return "".join(rows)


def import_files(ctx: AppContext, files: list | None, tr: Translator) -> list[str]:
    """Import each file; returns the new conversations' ids (a warning for each failure)."""
    ids = []
    for file in files or []:
        path = Path(getattr(file, "name", file))
        try:
            ids += [c.id for c in import_file(ctx.store, path)]
        except ItamaeError as e:
            gr.Warning(tr("sidebar.import_failed", name=path.name, message=str(e)))
    if ids:
        gr.Info(tr("sidebar.imported", n=len(ids)))
    return ids


def export_file(ctx: AppContext, session: ChatSession, lang: str, kind: str):
    """The open conversation as a Markdown ("md") or JSON file, for the download link."""
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


# What the chat tab shows of a conversation: (session, conversation_id, lang) -> values.
OpenConversation = Callable[[ChatSession, str | None, str], list]


class ConversationsSidebar:
    _open: OpenConversation  # set by wire(): the chat tab's view of a conversation

    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        with labels(gr.Sidebar, label=Key("sidebar.title"), open=True, width=290):
            gr.HTML('<div class="brand"><img src="/itamae-assets/icon.svg" alt=""> Itamae</div>')
            self.new_chat = labels(
                gr.Button,
                value=Key("sidebar.new"),
                variant="primary",
                elem_id="new-chat",
                size="md",
            )
            self.search = labels.bare_textbox(Key("sidebar.search"), elem_id="conversation-search")
            self.search_hits = gr.HTML("", elem_id="search-hits")
            self.conversations = gr.Radio(
                choices=[], show_label=False, container=False, elem_id="conversation-list"
            )
            self.import_button = labels(
                gr.UploadButton,
                label=Key("sidebar.import"),
                file_count="multiple",
                file_types=[".json"],
                size="sm",
                elem_id="import",
            )
            with labels(gr.Accordion, label=Key("sidebar.manage"), open=False, elem_id="manage"):
                self._build_manage(labels)

    def _build_manage(self, labels: Labels) -> None:
        self.title = labels(gr.Textbox, label=Key("sidebar.rename_label"), elem_id="rename-title")
        with gr.Row():
            self.rename = labels(gr.Button, value=Key("sidebar.rename"), size="sm")
            self.delete = labels(gr.Button, value=Key("sidebar.delete"), size="sm")
        # Deleting is two clicks: the second button only appears after the first.
        self.confirm_delete = labels(
            gr.Button,
            value=Key("sidebar.confirm_delete"),
            size="sm",
            variant="stop",
            visible=False,
            elem_id="confirm-delete",
        )
        with gr.Row():
            self.export_md = labels(gr.Button, value=Key("sidebar.export_md"), size="sm")
            self.export_json = labels(gr.Button, value=Key("sidebar.export_json"), size="sm")
        self.export_file = gr.File(visible=False, show_label=False, elem_id="export-file")

    def listing(self, session: ChatSession, query: str = "") -> dict:
        return list_update(self.ctx, session, query)

    # -- events ----------------------------------------------------------------------

    def wire(
        self,
        session: gr.State,
        lang: gr.State,
        open_outputs: list,
        open_conversation: OpenConversation,
    ) -> None:
        """`open_conversation` gives values for `open_outputs` (the chat tab's view of a
        conversation); the sidebar calls it when a conversation is picked, created or
        deleted."""
        self._open = open_conversation
        opened = [*open_outputs, self.title, self.conversations]
        self.search.change(
            self.on_search,
            [self.search, session],
            [self.conversations, self.search_hits],
            show_progress="hidden",
            trigger_mode="always_last",
        )
        self.import_button.upload(
            self.on_import, [self.import_button, session, lang, self.search], opened
        )
        self.conversations.input(
            self.on_pick,
            [self.conversations, session, lang],
            [*open_outputs, self.title],
            show_progress="hidden",
        )
        self.new_chat.click(self.on_new, [session, lang, self.search], opened)
        renamed = [self.title, session, lang, self.search]
        self.rename.click(self.on_rename, renamed, [self.conversations])
        self.title.submit(self.on_rename, renamed, [self.conversations])
        self.delete.click(self.on_ask_delete, [session], [self.confirm_delete])
        self.confirm_delete.click(self.on_delete, [session, lang, self.search], opened).then(
            self.on_deleted, None, [self.confirm_delete]
        )
        self.export_md.click(self.on_export_md, [session, lang], [self.export_file])
        self.export_json.click(self.on_export_json, [session, lang], [self.export_file])

    def on_search(self, query: str, session: ChatSession):
        return self.listing(session, query), search_hits_html(self.ctx, query)

    def on_import(self, files: list | None, session: ChatSession, lang: str, query: str):
        """Import the files and open the first conversation they held."""
        ids = import_files(self.ctx, files, Translator(lang))
        if not ids:
            return (gr.skip(),) * (len(self._open(session, session.conversation_id, lang)) + 2)
        session.stop()
        title = self.ctx.store.get(ids[0]).title
        return (*self._open(session, ids[0], lang), title, self.listing(session, query))

    def on_pick(self, conversation_id: str | None, session: ChatSession, lang: str):
        conv = self.ctx.store.get(conversation_id) if conversation_id else None
        title = conv.title if conv else ""
        return (*self._open(session, conversation_id, lang), title)

    def on_new(self, session: ChatSession, lang: str, query: str):
        session.stop()
        return (*self._open(session, None, lang), "", self.listing(session, query))

    def on_rename(self, title: str, session: ChatSession, lang: str, query: str):
        tr = Translator(lang)
        if not session.conversation_id:
            gr.Warning(tr("sidebar.nothing_selected"))
        elif not title.strip():
            gr.Warning(tr("sidebar.title_needed"))
        else:
            self.ctx.store.rename(session.conversation_id, title)
        return self.listing(session, query)

    def on_ask_delete(self, session: ChatSession):
        return gr.update(visible=bool(session.conversation_id))

    def on_delete(self, session: ChatSession, lang: str, query: str):
        if session.conversation_id:
            session.stop()
            self.ctx.store.delete(session.conversation_id)
        return (*self._open(session, None, lang), "", self.listing(session, query))

    def on_deleted(self):
        return gr.update(visible=False)

    def on_export_md(self, session: ChatSession, lang: str):
        return export_file(self.ctx, session, lang, "md")

    def on_export_json(self, session: ChatSession, lang: str):
        return export_file(self.ctx, session, lang, "json")
