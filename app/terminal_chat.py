"""Chat in the terminal, as `ollama run` gives its users: a line-editing prompt with
history (GNU readline through Python's `readline` module), `\"\"\"` blocks and
trailing-backslash lines for multi-line messages, slash commands, Ctrl-C that stops a
reply and keeps the session, reasoning shown dimmed, and a stats line after each reply.
With stdin not a terminal the same loop reads one message per line and prints the
answers alone, so scripts can pipe into it.

Replies are written by app/chat_reply.py into the same conversation store as the UI's,
so a terminal conversation is in the browser's sidebar too.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from app.chat_reply import ChatParams, stream_reply
from app.model_manager import ModelManager
from app.store import ConversationStore
from converters.core.errors import ItamaeError
from engine.reasoning import THINK_CLOSE, THINK_OPEN

PROMPT, MORE = ">>> ", "... "
BLOCK = '"""'  # a line of three quotes opens and closes a multi-line message
DIM, RESET = "\x1b[2m", "\x1b[0m"
HELP = """\
/new            start a new conversation
/system [TEXT]  set the system prompt (without TEXT: show it)
/model NAME     load another model (a folder, a .gguf, or 'demo')
/exit           leave (also /bye or Ctrl-D)
Ctrl-C stops a reply; \"\"\" opens and closes a multi-line message; a line ending in \\ goes on."""


class ReplyPrinter:
    """Prints a reply as it grows: reasoning (between <think> and </think>) dimmed, or
    left out, the answer as it is. A tag split across pieces is held back until
    complete, so it is never printed half."""

    def __init__(self, out: TextIO, color: bool, show_reasoning: bool):
        self.out, self.color, self.show_reasoning = out, color, show_reasoning
        self.printed = 0  # characters of the reply's text dealt with so far
        self.thinking = False
        self.wrote_answer = False

    def feed(self, text: str) -> None:
        """`text` is the whole reply so far; prints what is new in it."""
        while self.printed < len(text):
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            end = text.find(tag, self.printed)
            stray = -1 if self.thinking else text.find(THINK_CLOSE, self.printed)
            if stray >= 0 and (end < 0 or stray < end):
                # R1 style: the opening tag was in the prompt; the closing one is dropped.
                self._emit(text[self.printed : stray])
                self.printed = stray + len(THINK_CLOSE)
                continue
            if end < 0:
                safe = len(text) - _partial_tag(text, self.printed, tag)
                self._emit(text[self.printed : safe])
                self.printed = safe
                return
            self._emit(text[self.printed : end])
            self.printed = end + len(tag)
            self.thinking = not self.thinking
            if not self.thinking and self.show_reasoning:
                self.out.write("\n")

    def finish(self, text: str) -> None:
        """The reply ended: what was held back as a possible tag is text after all."""
        self._emit(text[self.printed :])
        self.printed = len(text)

    def _emit(self, piece: str) -> None:
        if not piece:
            return
        if self.thinking:
            if self.show_reasoning:
                self.out.write(f"{DIM}{piece}{RESET}" if self.color else piece)
        else:
            if not self.wrote_answer:
                piece = piece.lstrip()  # the blank line a model writes after </think>
            self.wrote_answer = self.wrote_answer or bool(piece)
            self.out.write(piece)
        self.out.flush()


def _partial_tag(text: str, start: int, tag: str) -> int:
    """How many characters at the end of text[start:] could be the start of `tag`
    (or of the closing tag, which can appear on its own)."""
    for n in range(min(len(tag), len(text) - start), 0, -1):
        tail = text[-n:]
        if tag.startswith(tail) or THINK_CLOSE.startswith(tail):
            return n
    return 0


def stats_text(stats: dict | None, finish_reason: str | None) -> str:
    stats = stats or {}
    parts = [f"{stats.get('completion_tokens', 0)} tokens"]
    if stats.get("ttft_s"):
        parts.append(f"first token {stats['ttft_s']:.2f} s")
    if stats.get("decode_tps"):
        parts.append(f"{stats['decode_tps']:.1f} tokens/s")
    if finish_reason == "cancelled":
        parts.append("stopped")
    elif finish_reason == "length":
        parts.append("cut at the reply limit")
    return " · ".join(parts)


def next_message(read: Callable[[str], str | None]) -> str | None:
    """One message from input lines: a line, lines joined by a trailing backslash, or a
    \"\"\" block (which may open and close on the lines of its text, as in `ollama run`)."""
    line = read(PROMPT)
    if line is None or not line.lstrip().startswith(BLOCK):
        parts = [line]
        while parts[-1] is not None and parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1]
            parts.append(read(MORE))
        return None if line is None else "\n".join(p for p in parts if p is not None)
    body, text = [], line.lstrip()[len(BLOCK) :]
    while text is not None and not text.rstrip().endswith(BLOCK):
        body.append(text)
        text = read(MORE)
    if text is not None:
        body.append(text.rstrip()[: -len(BLOCK)])
    return "\n".join(body).strip("\n")


@contextmanager
def interrupt_sets(cancel: threading.Event) -> Iterator[None]:
    """While a reply streams, Ctrl-C (SIGINT) asks the backend to stop at its next
    token instead of raising wherever Python happens to be."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TerminalChat:
    store: ConversationStore
    manager: ModelManager
    params: ChatParams
    model_name: str
    load_model: Callable[[str], tuple[str, ChatParams]]  # NAME -> (its name, its params)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    interactive: bool = True  # a person at a terminal (prompts, colours, reasoning)
    conversation_id: str | None = None

    def run(self, read: Callable[[str], str | None]) -> int:
        """Read messages and commands until /exit or the end of input; `read(prompt)`
        gives one line, None at the end."""
        while (message := next_message(read)) is not None:
            if message.startswith("/"):
                if self.command(message) == "exit":
                    break
            elif message.strip():
                self.send(message)
        return 0

    # -- commands ----------------------------------------------------------------------

    def command(self, line: str) -> str | None:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/bye", "/quit"):
            return "exit"
        if name == "/new":
            self.conversation_id = None
            self._note("New conversation.")
        elif name == "/system":
            if rest:
                self.params.system_prompt = rest
                if self.conversation_id:
                    self.store.set_system_prompt(self.conversation_id, rest)
                self._note("System prompt set.")
            else:
                self._note(self.params.system_prompt or "(no system prompt)")
        elif name == "/model" and rest:
            self._switch_model(rest)
        elif name in ("/help", "/?"):
            self._note(HELP)
        else:
            self._note(f"Unknown command {line!r}. Type /help for the list.")
        return None

    def _switch_model(self, name: str) -> None:
        try:
            self.model_name, params = self.load_model(name)
        except ItamaeError as e:
            self._note(f"itamae: {e}")
            return
        params.system_prompt = self.params.system_prompt
        self.params = params
        if self.conversation_id:
            self.store.set_model(self.conversation_id, self.model_name)
        self._note(f"Model: {self.model_name}")

    # -- replies -----------------------------------------------------------------------

    def send(self, text: str) -> str | None:
        """Store the message, stream the reply; returns the reply's finish reason."""
        if self.conversation_id is None or self.store.get(self.conversation_id) is None:
            conv = self.store.create(text, self.params.system_prompt, self.model_name)
            self.conversation_id = conv.id
        self.store.append(self.conversation_id, "user", text, "stop")
        printer = ReplyPrinter(self.out, self.interactive, self.interactive)
        cancel = threading.Event()
        reply = None
        with interrupt_sets(cancel):
            for update in stream_reply(
                self.store, self.manager, self.conversation_id, self.params, cancel
            ):
                reply = update.reply
                printer.feed(reply.content if reply.finish_reason != "error" else "")
        if reply.finish_reason != "error":
            printer.finish(reply.content)
        self.out.write("\n")
        self.out.flush()
        if reply.finish_reason == "error":
            self._note(f"itamae: {reply.content}")
        else:
            self._note(stats_text(reply.stats, reply.finish_reason), dim=True)
        return reply.finish_reason

    def _note(self, text: str, dim: bool = False) -> None:
        """What is not a reply: on the terminal (dimmed stats), or on stderr when piped
        so that stdout holds the replies alone."""
        if self.interactive:
            self.out.write(f"{DIM}{text}{RESET}\n" if dim else f"{text}\n")
            self.out.flush()
        else:
            print(text, file=self.err, flush=True)
