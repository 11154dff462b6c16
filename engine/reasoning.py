"""A reply's reasoning apart from its answer, whole or while it streams.

Reasoning models write their thoughts between <think> and </think> before the
answer. Qwen3 emits both tags; DeepSeek-R1's and V3.1's (thinking mode) chat templates
put "<think>" in the prompt, so the output starts inside the block and only the closing
tag appears (`opened`: the prompt said so, engine.prompting.PromptPlan.opens_reasoning).
gpt-oss writes Harmony messages (OpenAI's harmony format; its chat template): each opens
with <|channel|>NAME<|message|> and ends with <|end|> (then <|start|>assistant for the
next), the `analysis` channel being the reasoning and `final` the answer; the engines keep
these tokens in the reply text for such models (converters.archs.reply_has_markers).

The chat tab, the terminal chat and the three API surfaces all read replies here, so a
reply splits the same way wherever it is shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
HARMONY_CHANNEL = "<|channel|>"
# one Harmony message: channel name (a recipient or <|constrain|> may follow), then its text
# up to the message's end (or the end of what has streamed so far)
HARMONY_MESSAGE = re.compile(
    r"<\|channel\|>(\w+)[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>(.*?)(<\|end\|>|<\|return\|>|<\|call\|>|$)",
    re.DOTALL,
)


@dataclass
class ReplyParts:
    thinking: str | None  # None: the reply has no reasoning block
    answer: str
    thinking_done: bool = True


def split_harmony(text: str) -> ReplyParts:
    """Harmony: analysis messages are the thinking, final messages the answer."""
    thinking, answer, done = [], [], False
    for channel, body, end in HARMONY_MESSAGE.findall(text):
        if channel == "analysis":
            thinking.append(body.strip())
            done = bool(end)
        elif channel == "final":
            answer.append(body)
            done = True
    if not thinking:
        return ReplyParts(None, "".join(answer).lstrip())
    return ReplyParts("\n\n".join(thinking), "".join(answer).lstrip(), thinking_done=done)


def split_reasoning(text: str, opened: bool = False) -> ReplyParts:
    """`text` as reasoning and answer; `opened`: the prompt ended inside a <think> block."""
    if opened and not text.lstrip().startswith(THINK_OPEN):
        text = THINK_OPEN + text
    if text.lstrip().startswith(HARMONY_CHANNEL):
        return split_harmony(text)
    stripped = text.lstrip()
    close = text.find(THINK_CLOSE)
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN) :]
        end = body.find(THINK_CLOSE)
        if end == -1:
            return ReplyParts(body.strip(), "", thinking_done=False)
        return ReplyParts(body[:end].strip(), body[end + len(THINK_CLOSE) :].lstrip())
    if close != -1 and THINK_OPEN not in text[:close]:
        # R1 style, without being told: the opening tag was part of the prompt.
        return ReplyParts(text[:close].strip(), text[close + len(THINK_CLOSE) :].lstrip())
    if stripped and (THINK_OPEN.startswith(stripped) or HARMONY_CHANNEL.startswith(stripped)):
        # The first characters of "<think>" (or Harmony's "<|channel|>") have streamed in.
        return ReplyParts(None, "")
    return ReplyParts(None, text)


class ReasoningStream:
    """The new reasoning and answer text of a streaming reply, piece by piece.

    Each `feed` splits everything so far and hands out what was not handed out before:
    (reasoning delta, answer delta). A tag still streaming in (the first characters of
    </think>) is held back until it is whole, because the split does not show it yet.
    """

    def __init__(self, opened: bool = False):
        self.opened = opened
        self.text = ""
        self.thinking_sent = ""
        self.answer_sent = ""

    def feed(self, piece: str) -> tuple[str, str]:
        self.text += piece
        parts = split_reasoning(self._settled(), self.opened)
        return self._delta("thinking_sent", parts.thinking or ""), self._delta(
            "answer_sent", parts.answer
        )

    def flush(self) -> tuple[str, str]:
        """At the end: what was held back. Text that only looked like the start of a tag
        is the answer after all."""
        parts = split_reasoning(self.text, self.opened)
        answer = parts.answer if parts.thinking is not None or parts.answer else self.text
        return self._delta("thinking_sent", parts.thinking or ""), self._delta(
            "answer_sent", answer
        )

    def _settled(self) -> str:
        """The text without a trailing tag that is still streaming in: a prefix of
        </think> (or <think>), or an unclosed Harmony marker such as `<|ret`."""
        at = self.text.rfind("<")
        if at == -1:
            return self.text
        tail = self.text[at:]
        partial_think = THINK_CLOSE.startswith(tail) or THINK_OPEN.startswith(tail)
        partial_marker = tail.startswith("<|") and "|>" not in tail and len(tail) <= 32
        return self.text[:at] if partial_think or partial_marker or tail == "<" else self.text

    def _delta(self, sent_attr: str, now: str) -> str:
        sent = getattr(self, sent_attr)
        # Thinking is stripped of surrounding space, so it can grow by what was held back;
        # anything that is not an extension of what was sent is not sent again.
        if not now.startswith(sent):
            return ""
        setattr(self, sent_attr, now)
        return now[len(sent) :]
