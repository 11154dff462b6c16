"""Writing the next reply of a conversation: the bookkeeping around it (the person's
message saved with its files, the conversation made and titled, the path rewound to
regenerate a reply, an edit forked as a new branch), the conversation as the model sees
it (the path shown, nothing of the other branches), then the reply itself: ask the
shared model, stream its text, and save it while it grows. No Gradio here; the chat tab
(app/ui/chat.py) turns these updates into screens.

A reply is a row in the store from its first moment (finish_reason NULL while it
streams), updated every `SAVE_EVERY_S`, so a killed process keeps what was written and
the conversation shows it as interrupted. Stop is the `cancel` Event the backend checks
at every token; a consumer that goes away (the tab closed) closes this generator, which
cancels the generation and records the reply as stopped.

A reply's reasoning is split from its answer by engine/reasoning.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from app.attachments import Attachment, message_with_attachments, split_attachments
from app.i18n import Translator
from app.model_manager import ModelManager
from app.store import ConversationStore, StoredMessage, StoreError
from engine.reasoning import split_reasoning
from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent

# the chat tab's reasoning choice: the template's default, thinking off, or an effort level
# (gpt-oss reads the level; templates with only an on/off switch turn thinking on)
REASONING_CHOICES = ("default", "off", "low", "medium", "high")
SAVE_EVERY_S = 0.5  # a killed process loses at most this much of a streaming reply


@dataclass
class ChatParams:
    """What the chat tab's controls say, in the order the tab passes them."""

    system_prompt: str
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    max_tokens: int
    seed: float | None
    experts_per_token: int
    reasoning: str = "default"  # REASONING_CHOICES: the model's default, off, or an effort

    def request(self, messages) -> GenerationRequest:
        seed = None if self.seed is None or self.seed < 0 else int(self.seed)
        sampling = SamplingParams(
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=int(self.top_k),
            min_p=float(self.min_p),
            repeat_penalty=float(self.repeat_penalty),
            seed=seed,
            max_tokens=int(self.max_tokens),
        )
        experts = int(self.experts_per_token) or None  # 0 means the model's own top-k
        req = GenerationRequest(messages=messages, sampling=sampling, experts_per_token=experts)
        if self.reasoning == "off":
            req.enable_thinking = False
        elif self.reasoning in ("low", "medium", "high"):
            req.enable_thinking, req.reasoning_effort = True, self.reasoning
        return req


@dataclass
class ReplyUpdate:
    history: list[StoredMessage]  # the conversation before this reply
    reply: StoredMessage  # the reply as it stands (content grows; finish_reason at the end)
    done: bool = False

    @property
    def messages(self) -> list[StoredMessage]:
        return [*self.history, self.reply]


def model_unavailable(manager: ModelManager, tr: Translator) -> str | None:
    """A message when nothing could answer; None when a model is loaded or loading
    (a message sent while the model loads waits for it in the manager's queue)."""
    status = manager.status
    if manager.backend is not None or status.state == "loading":
        return None
    if status.state == "error":
        return tr("chat.model_failed", message=status.message)
    return tr("chat.no_model")


# -- before a reply: what the person did -------------------------------------------------


def send_message(
    store: ConversationStore,
    manager: ModelManager,
    conversation_id: str | None,
    text: str,
    system_prompt: str,
    attachments: list[Attachment] | tuple = (),
) -> str:
    """Save the person's message (with the files attached to it, app/attachments.py);
    returns its conversation's id. Without an open conversation (or when it was deleted
    meanwhile, in another tab) a new one is made, titled from the message (or the first
    file); an open one takes the system prompt shown now. Either way the conversation
    records the model that will answer."""
    if conversation_id is None or store.get(conversation_id) is None:
        title = text if text.strip() or not attachments else attachments[0].name
        conversation_id = store.create(title, system_prompt).id
    else:
        store.set_system_prompt(conversation_id, system_prompt)
    store.set_model(conversation_id, manager.status.message)
    content = message_with_attachments(text, list(attachments))
    store.append(conversation_id, "user", content, "stop")
    return conversation_id


def rewind_last_reply(store: ConversationStore, conversation_id: str | None) -> bool:
    """Before regenerating: show the path up to the message the last reply answered, so
    the next reply becomes its alternative (the old reply, and what followed it, stay in
    the tree). False when the conversation has nothing to answer again."""
    stored = store.messages(conversation_id) if conversation_id else []
    if not stored:
        return False
    last_reply = next((m for m in reversed(stored) if m.role == "assistant"), None)
    if last_reply is not None:
        store.rewind(conversation_id, last_reply.parent_id)
    return True


def edit_message(
    store: ConversationStore, conversation_id: str, position: int, text: str
) -> int | None:
    """The person changed their message at `position`: the new text becomes a new branch
    there, with the files the message had (the old version and its replies stay a step
    away). Returns the new message's id; None, changing nothing, when `position` is not
    one of the person's messages."""
    stored = store.messages(conversation_id)
    target = next((m for m in stored if m.position == position), None)
    if target is None or target.role != "user":
        return None
    _, files = split_attachments(target.content)
    return store.fork(target.id, message_with_attachments(text, files)).id


def history_for_model(stored: list[StoredMessage], system_prompt: str) -> list[Message]:
    """The conversation as the model should see it: replies without their reasoning
    (Qwen3's and R1's templates drop earlier thoughts too), failed replies left out."""
    messages = [Message("system", system_prompt)] if system_prompt.strip() else []
    for m in stored:
        if m.role == "assistant":
            if m.finish_reason == "error" or not m.content.strip():
                continue
            messages.append(Message("assistant", split_reasoning(m.content).answer))
        elif m.role == "user":
            messages.append(Message("user", m.content))
    return messages


# -- the reply ---------------------------------------------------------------------------


def stream_reply(
    store: ConversationStore,
    manager: ModelManager,
    conversation_id: str,
    params: ChatParams,
    cancel: threading.Event,
) -> Iterator[ReplyUpdate]:
    """Generate the conversation's next reply; yields after every piece of text and once
    more, `done`, with the finish reason and stats stored."""
    history = store.messages(conversation_id)
    request = params.request(history_for_model(history, params.system_prompt))
    row = store.append(conversation_id, "assistant", "")
    text, finish, stats = "", None, None
    last_save = 0.0

    def current(**changes) -> StoredMessage:
        fields = {"content": text, "finish_reason": finish, "stats": stats} | changes
        return StoredMessage(row.id, conversation_id, row.position, "assistant", **fields)

    try:
        yield ReplyUpdate(history, current())
        for event in manager.stream(request, cancel):
            if isinstance(event, TokenEvent):
                text += event.text
                now = time.monotonic()
                if now - last_save >= SAVE_EVERY_S:
                    store.update(row.id, text)
                    last_save = now
                yield ReplyUpdate(history, current())
            elif isinstance(event, FinalEvent):
                finish, stats = event.finish_reason, event.stats.to_json()
                if finish == "error":
                    text = event.error or text
        finish = finish or "stop"
        store.update(row.id, text, finish, stats)
        yield ReplyUpdate(history, current(), done=True)
    finally:
        if finish is None:  # closed early: the consumer went away
            cancel.set()
            with contextlib.suppress(StoreError):  # the conversation may be deleted meanwhile
                store.update(row.id, text, "cancelled", stats)
