"""Writing the next reply of a conversation: ask the shared model, stream its text, and
save it while it grows. No Gradio here; the chat tab turns these updates into screens.

A reply is a row in the store from its first moment (finish_reason NULL while it
streams), updated every `SAVE_EVERY_S`, so a killed process keeps what was written and
the conversation shows it as interrupted. Stop is the `cancel` Event the backend checks
at every token; a consumer that goes away (the tab closed) closes this generator, which
cancels the generation and records the reply as stopped.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from app.chat_view import history_for_model
from app.i18n import Translator
from app.model_manager import ModelManager
from app.store import ConversationStore, StoredMessage, StoreError
from engine.types import FinalEvent, GenerationRequest, SamplingParams, TokenEvent

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
        return GenerationRequest(messages=messages, sampling=sampling, experts_per_token=experts)


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
    if manager.backend is not None or status["state"] == "loading":
        return None
    if status["state"] == "error":
        return tr("chat.model_failed", message=status["message"])
    return tr("chat.no_model")


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
