"""The chat tab: streamed replies with math (KaTeX) and highlighted code, stop,
regenerate and edit as branches (app/ui/chat_branches.py steps between them), attached
files (app/ui/chat_attachments.py), beside the side panel of app/ui/chat_controls.py
(experts, system prompt presets, sampling per model).

Streaming goes through generators end to end (the text-generation-webui way):
`ModelManager.stream` yields events, app/chat_reply.py saves the person's message and
the reply as it grows, and the handlers here yield Chatbot updates. Stop sets the
browser tab's own cancel Event, which the backend checks at every token.
"""

from __future__ import annotations

import threading
import time

import gradio as gr

from app.chat_reply import (
    ChatParams,
    edit_message,
    model_unavailable,
    rewind_last_reply,
    send_message,
    stream_reply,
)
from app.context import AppContext
from app.i18n import Translator
from app.ui import expert_heatmap
from app.ui.chat_attachments import AttachmentsBar
from app.ui.chat_branches import BranchBar
from app.ui.chat_controls import ChatControls
from app.ui.chat_view import to_chatbot, typed_text
from app.ui.conversations import ChatSession, ConversationsSidebar
from app.ui.labels import Key, Labels
from converters.core.errors import ItamaeError

SHOW_EVERY_S = 0.05  # screen updates: smooth to the eye, cheap for the websocket
# KaTeX delimiters, for replies and the person's own messages: inline $...$ and \(...\),
# display $$...$$ and \[...\], the spellings models write. Code blocks are highlighted
# by the Chatbot's Markdown renderer.
LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
]


def finished_heatmap(stats: dict | None, tr: Translator) -> str:
    counts = (stats or {}).get("expert_counts")
    if counts:
        return expert_heatmap.render(counts, tr)
    # llama.cpp and remote servers do not say which experts worked
    return f'<div class="heatmap-empty">{tr("heatmap.unavailable")}</div>'


class ChatTab:
    sidebar: ConversationsSidebar  # set by wire(): whose listing follows each reply

    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        with gr.Row(elem_id="chat-row", equal_height=False):
            with gr.Column(scale=4, min_width=420, elem_id="chat-column"):
                self._build_chat(labels)
            self.controls = ChatControls(ctx, labels)

    def _build_chat(self, labels: Labels) -> None:
        self.chatbot = labels(
            gr.Chatbot,
            label=Key("chat.label"),
            placeholder=Key("chat.placeholder"),
            show_label=False,
            elem_id="chatbot",
            height="64vh",
            editable="user",
            buttons=["copy", "copy_all"],
            feedback_options=None,
            group_consecutive_messages=True,
            avatar_images=(None, "assets/icon.svg"),
            latex_delimiters=LATEX_DELIMITERS,
        )
        with gr.Row(elem_id="composer", equal_height=True):
            self.message = labels.bare_textbox(
                Key("chat.input"),
                lines=1,  # Gradio submits on Enter only for one-line boxes; it still grows
                max_lines=8,
                scale=8,
                autofocus=True,
                elem_id="message",
            )
            button = {"scale": 1, "min_width": 110}
            self.send = labels(
                gr.Button, value=Key("chat.send"), variant="primary", elem_id="send", **button
            )
            self.stop = labels(
                gr.Button,
                value=Key("chat.stop"),
                variant="stop",
                visible=False,
                elem_id="stop",
                **button,
            )
        # One line under the composer, so the page still fits the window.
        with gr.Row(elem_id="chat-actions", equal_height=True):
            self.regenerate = labels(
                gr.Button,
                value=Key("chat.regenerate"),
                size="sm",
                elem_id="regenerate",
                scale=0,
                min_width=140,
            )
            self.branch = BranchBar(self.ctx)
            self.attachments = AttachmentsBar(self.ctx, labels)

    # -- opening a conversation ------------------------------------------------------

    def open_outputs(self, session: gr.State) -> list:
        views = [self.chatbot, self.controls.system_prompt, self.controls.heatmap, session]
        return [*views, *self.branch.outputs]

    def open_conversation(self, session: ChatSession, conversation_id: str | None, lang: str):
        """Values for `open_outputs`: chatbot, system prompt, heatmap, session, branch bar."""
        tr = Translator(lang)
        store = self.ctx.store
        conv = store.get(conversation_id) if conversation_id else None
        if session.conversation_id != (conv.id if conv else None):
            session.branch_id = None
        session.conversation_id = conv.id if conv else None
        if conv is None:
            return (
                [],
                "",
                expert_heatmap.render(None, tr),
                session,
                *self.branch.values(session, tr),
            )
        stored = store.messages(conv.id)
        last_stats = next(
            (m.stats for m in reversed(stored) if m.role == "assistant" and m.stats), None
        )
        counts = (last_stats or {}).get("expert_counts")
        return (
            to_chatbot(stored, tr).messages,
            conv.system_prompt,
            expert_heatmap.render(counts, tr),
            session,
            *self.branch.values(session, tr),
        )

    # -- events ----------------------------------------------------------------------

    def wire(self, session: gr.State, lang: gr.State, sidebar: ConversationsSidebar) -> None:
        self.sidebar = sidebar
        busy = [self.send, self.stop, self.regenerate]
        outputs = [self.chatbot, self.message, sidebar.conversations, self.controls.heatmap]
        outputs += [session, *busy, *self.branch.outputs, *self.attachments.outputs]
        streamed = {"concurrency_limit": None, "show_progress": "hidden"}
        params = self.controls.params
        send_inputs = [self.message, session, lang, sidebar.search, *params]
        for trigger in (self.send.click, self.message.submit):
            trigger(self.on_send, send_inputs, outputs, **streamed)
        self.stop.click(self.on_stop, [session], None, queue=False, show_progress="hidden")
        again_inputs = [session, lang, sidebar.search, *params]
        for trigger in (self.regenerate.click, self.chatbot.retry):
            trigger(self.on_regenerate, again_inputs, outputs, **streamed)
        self.chatbot.edit(self.on_edit, again_inputs, outputs, **streamed)
        # Gradio's own "clear" icon on the chat starts a new conversation; the cleared one
        # stays in the sidebar (deleting is the sidebar's, with a confirmation).
        cleared = [*self.open_outputs(session), sidebar.conversations]
        self.chatbot.clear(self.on_clear, [session, lang, sidebar.search], cleared)
        self.controls.wire(lang)
        opened = self.open_outputs(session)
        self.branch.wire(session, lang, self.chatbot, opened, self.open_conversation)
        self.attachments.wire(session, lang)

    def on_send(self, text: str, session: ChatSession, lang: str, query: str, *params):
        tr = Translator(lang)
        params = ChatParams(*params)
        if not text.strip() and not session.attachments:
            return
        problem = model_unavailable(self.ctx.manager, tr)
        if problem:
            gr.Warning(problem)
            return
        store = self.ctx.store
        history = store.messages(session.conversation_id) if session.conversation_id else []
        try:  # the files must fit with the conversation, or the message is not sent
            self.attachments.check(session, history, text, params.system_prompt)
        except ItamaeError as e:
            gr.Warning(str(e))
            return
        files, session.attachments = session.attachments, []
        session.conversation_id = send_message(
            store, self.ctx.manager, session.conversation_id, text, params.system_prompt, files
        )
        session.branch_id = None
        yield from self._run(session, params, tr, query, clear_message=True)

    def on_stop(self, session: ChatSession):
        session.stop()

    def on_regenerate(self, session: ChatSession, lang: str, query: str, *params):
        tr = Translator(lang)
        problem = model_unavailable(self.ctx.manager, tr)
        if problem:
            gr.Warning(problem)
            return
        if not rewind_last_reply(self.ctx.store, session.conversation_id):
            return
        session.branch_id = None  # the new reply, last on the path, is the one to step
        yield from self._run(session, ChatParams(*params), tr, query)

    def on_edit(self, edit: gr.EditData, session: ChatSession, lang: str, query: str, *params):
        tr = Translator(lang)
        if not session.conversation_id:
            return
        store = self.ctx.store
        display = to_chatbot(store.messages(session.conversation_id), tr)
        if not 0 <= edit.index < len(display.positions):
            return
        position = display.positions[edit.index]
        text = typed_text(str(edit.value))  # the edit box holds the file chips too
        edited = edit_message(store, session.conversation_id, position, text)
        if edited is None:
            return
        session.branch_id = edited
        problem = model_unavailable(self.ctx.manager, tr)
        if problem:
            gr.Warning(problem)
            shown = to_chatbot(store.messages(session.conversation_id), tr).messages
            yield self._frame(session, shown, None, generating=False, tr=tr)
            return
        yield from self._run(session, ChatParams(*params), tr, query)

    def on_clear(self, session: ChatSession, lang: str, query: str):
        session.stop()
        opened = self.open_conversation(session, None, lang)
        return (*opened, self.sidebar.listing(session, query))

    # -- generating ------------------------------------------------------------------

    def _run(self, session, params: ChatParams, tr: Translator, query: str, clear_message=False):
        messages = gr.skip()
        for step, (messages, heatmap) in enumerate(self._screens(session, params, tr)):
            if step == 0:  # the new conversation (or its new place) shows in the sidebar
                listing = self.sidebar.listing(session, query)
                cleared = "" if clear_message else None
                yield self._frame(
                    session, messages, heatmap, message=cleared, listing=listing, generating=True
                )
            else:
                yield self._frame(session, messages, heatmap)
        listing = self.sidebar.listing(session, query)
        if session.conversation_id:  # as stored: with the reply's place among its alternatives
            messages = to_chatbot(self.ctx.store.messages(session.conversation_id), tr).messages
        yield self._frame(session, messages, None, listing=listing, generating=False, tr=tr)

    def _screens(self, session: ChatSession, params: ChatParams, tr: Translator):
        """The chat as the next reply streams in: (chatbot messages, heatmap html or None),
        at most every SHOW_EVERY_S, and always the finished reply with its expert usage."""
        cancel = threading.Event()
        session.cancel = cancel  # what this tab's Stop button sets
        last_show = 0.0
        ctx = self.ctx
        for update in stream_reply(ctx.store, ctx.manager, session.conversation_id, params, cancel):
            now = time.monotonic()
            if update.done:
                heatmap = finished_heatmap(update.reply.stats, tr)
                yield to_chatbot(update.messages, tr).messages, heatmap
            elif now - last_show >= SHOW_EVERY_S:
                last_show = now
                yield to_chatbot(update.messages, tr, streaming=True).messages, None

    def _frame(
        self, session, messages, heatmap, *, message=None, listing=None, generating=None, tr=None
    ):
        """One screen update; None leaves a component as it is. The buttons change only
        when generation starts or ends: re-rendering Stop on every token would make it
        impossible to click. The branch bar hides while a reply streams, and the file
        chips clear with the message box."""
        buttons = (
            (gr.skip(),) * 3
            if generating is None
            else (
                gr.update(visible=not generating),
                gr.update(visible=generating),
                gr.update(interactive=not generating),
            )
        )
        if generating is None:
            bar = (gr.skip(), gr.skip())
        elif generating:
            bar = (gr.update(visible=False), gr.skip())
        else:
            bar = self.branch.values(session, tr)
        chips = (gr.skip(), gr.skip()) if message is None else ("", gr.update(visible=False))
        return (
            messages,
            gr.skip() if message is None else message,
            gr.skip() if listing is None else listing,
            gr.skip() if heatmap is None else heatmap,
            session,
            *buttons,
            *bar,
            *chips,
        )
