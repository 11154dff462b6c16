"""How stored messages look in the chat: reasoning blocks, reply stats, interruptions,
a reply's place among its alternatives, attached files as chips.

Pure functions from the store's messages to Gradio's Chatbot "messages" format
(https://www.gradio.app/docs/gradio/chatbot), so the chat tab stays thin and this
part is tested without a browser.

A reply's reasoning (engine/reasoning.py's `split_reasoning`: Qwen3's <think> block, or
DeepSeek-R1's that only closes) becomes a collapsible "thinking" message (Gradio's
`metadata.title`) above the answer, open with a spinner while the model still thinks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape

from app.attachments import split_attachments
from app.i18n import Translator
from app.store import StoredMessage
from engine.reasoning import split_reasoning


def stats_line(stats: dict | None, finish_reason: str | None, tr: Translator) -> str:
    """One subdued line under a reply: tokens, time to first token, tokens/s."""
    parts = []
    if stats:
        parts.append(tr("stats.tokens", n=stats.get("completion_tokens", 0)))
        if stats.get("ttft_s"):
            parts.append(tr("stats.ttft", s=f"{stats['ttft_s']:.2f}"))
        if stats.get("decode_tps"):
            parts.append(tr("stats.tps", tps=f"{stats['decode_tps']:.1f}"))
    if finish_reason == "cancelled":
        parts.append(tr("stats.stopped"))
    elif finish_reason == "length":
        parts.append(tr("stats.length"))
    return " · ".join(parts)


@dataclass
class ChatDisplay:
    messages: list[dict]
    # positions[i]: the store position of the message shown at display index i
    positions: list[int]


def to_chatbot(stored: list[StoredMessage], tr: Translator, streaming: bool = False) -> ChatDisplay:
    """Chatbot messages for a conversation; `streaming` marks the last reply as live."""
    shown: list[dict] = []
    positions: list[int] = []

    def add(message: dict, position: int) -> None:
        shown.append(message)
        positions.append(position)

    for index, m in enumerate(stored):
        live = streaming and index == len(stored) - 1
        if m.role == "user":
            add({"role": "user", "content": user_content(m.content, tr)}, m.position)
        elif m.role == "assistant":
            for message in _reply_messages(m, tr, live):
                add(message, m.position)
    return ChatDisplay(shown, positions)


def _reply_messages(m: StoredMessage, tr: Translator, live: bool) -> list[dict]:
    parts = split_reasoning(m.content)
    out = []
    if parts.thinking is not None:
        pending = live and not parts.thinking_done
        out.append(
            {
                "role": "assistant",
                "content": parts.thinking or "…",
                "metadata": {
                    "title": tr("chat.thinking") if pending else tr("chat.thought"),
                    "status": "pending" if pending else "done",
                },
            }
        )
    if m.finish_reason == "error":
        out.append({"role": "assistant", "content": f"⚠️ {m.content or tr('chat.error')}"})
        return out
    answer = parts.answer
    if not answer and live:
        answer = "" if parts.thinking is not None else "…"
    if answer:
        out.append({"role": "assistant", "content": answer})
    if live:
        return out
    if m.interrupted:
        note = tr("chat.interrupted")
    else:
        note = stats_line(m.stats, m.finish_reason, tr)
    if len(m.alternatives) > 1:  # which of the regenerated replies this is
        branch = f"{m.alternatives.index(m.id) + 1} / {len(m.alternatives)}"
        note = f"{branch} · {note}" if note else branch
    if note:
        out.append({"role": "assistant", "content": f'<span class="reply-stats">{note}</span>'})
    return out


_CHIPS = re.compile(r'^(?:<span class="attachment-chip">.*?</span></span>\s*)+', re.S)


def user_content(content: str, tr: Translator) -> str:
    """A person's message as shown: a chip per attached file (name and tokens), then
    what they typed. The files' text is in the store and the prompt, not on screen."""
    text, files = split_attachments(content)
    chips = "".join(
        f'<span class="attachment-chip">📎 {escape(a.name)} '
        f'<span class="tokens">{escape(tr("chat.attachment_tokens", n=a.tokens))}</span></span>'
        for a in files
    )
    return f"{chips}\n\n{text}" if chips else text


def typed_text(shown: str) -> str:
    """What the person typed, from a shown message (an edit box holds the chips too)."""
    return _CHIPS.sub("", shown).strip()
