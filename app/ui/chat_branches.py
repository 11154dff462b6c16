"""Branch navigation in the chat: "‹ 2 / 3 ›" steps through the alternatives of one
message of the shown path (the replies a regenerate made, the versions an edit made).

Which message it steps through: the one the person clicked in the chat (or the one the
last regenerate or edit made), else the last message on the path that has alternatives.
Stepping switches the store's shown path (ConversationStore.switch), so the model sees
only the branch on screen.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

import gradio as gr

from app.context import AppContext
from app.i18n import Translator
from app.store import StoredMessage
from app.ui.chat_view import to_chatbot
from app.ui.conversations import ChatSession

PREV, NEXT = "‹", "›"


def branch_target(path: list[StoredMessage], preferred: int | None) -> StoredMessage | None:
    with_alternatives = [m for m in path if len(m.alternatives) > 1]
    chosen = next((m for m in with_alternatives if m.id == preferred), None)
    return chosen or (with_alternatives[-1] if with_alternatives else None)


def bar_values(path: list[StoredMessage], preferred: int | None, tr: Translator) -> tuple:
    """(row update, label html) for the message the bar steps through."""
    target = branch_target(path, preferred)
    if target is None:
        return gr.update(visible=False), ""
    kind = tr("chat.branch_reply" if target.role == "assistant" else "chat.branch_message")
    place = f"{target.alternatives.index(target.id) + 1} / {len(target.alternatives)}"
    label = f'<span class="branch-nav" data-message="{target.id}">{escape(kind)} {place}</span>'
    return gr.update(visible=True), label


def step(path: list[StoredMessage], preferred: int | None, offset: int) -> int | None:
    """The alternative `offset` places from the target's (clamped); None when none."""
    target = branch_target(path, preferred)
    if target is None:
        return None
    index = target.alternatives.index(target.id) + offset
    return target.alternatives[max(0, min(len(target.alternatives) - 1, index))]


class BranchBar:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        with gr.Row(elem_id="branch-bar", visible=False) as self.row:
            self.prev = gr.Button(PREV, size="sm", elem_id="branch-prev", scale=0, min_width=40)
            self.label = gr.HTML("", elem_id="branch-label")
            self.next = gr.Button(NEXT, size="sm", elem_id="branch-next", scale=0, min_width=40)

    @property
    def outputs(self) -> list:
        return [self.row, self.label]

    def values(self, session: ChatSession, tr: Translator) -> tuple:
        store = self.ctx.store
        path = store.messages(session.conversation_id) if session.conversation_id else []
        return bar_values(path, session.branch_id, tr)

    def wire(
        self,
        session: gr.State,
        lang: gr.State,
        chatbot: gr.Chatbot,
        open_outputs: list,
        open_conversation: Callable,
    ) -> None:
        """`open_conversation(session, id, lang)` redraws the chat after a step."""
        self.open_conversation = open_conversation
        for button, offset in ((self.prev, -1), (self.next, 1)):
            button.click(
                lambda s, lang, offset=offset: self.on_step(offset, s, lang),
                [session, lang],
                open_outputs,
                show_progress="hidden",
            )
        chatbot.select(
            self.on_select, [session, lang], [*self.outputs, session], show_progress="hidden"
        )

    def on_step(self, offset: int, session: ChatSession, lang: str):
        store = self.ctx.store
        path = store.messages(session.conversation_id) if session.conversation_id else []
        target = step(path, session.branch_id, offset)
        if target is not None:
            store.switch(target)
            session.branch_id = target
        return self.open_conversation(session, session.conversation_id, lang)

    def on_select(self, selected: gr.SelectData, session: ChatSession, lang: str):
        """Clicking a message points the bar at it, when it has alternatives."""
        tr = Translator(lang)
        store = self.ctx.store
        path = store.messages(session.conversation_id) if session.conversation_id else []
        positions = to_chatbot(path, tr).positions
        index = selected.index if isinstance(selected.index, int) else -1
        if 0 <= index < len(positions):
            message = next(m for m in path if m.position == positions[index])
            if len(message.alternatives) > 1:
                session.branch_id = message.id
        return (*bar_values(path, session.branch_id, tr), session)
