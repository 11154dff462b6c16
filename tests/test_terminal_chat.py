"""`itamae chat`: piped input gives the demo's replies (the same text `itamae generate
--chat` gives for the same request), and a person at a pseudo-terminal gets line
editing with history, multi-line messages and a Ctrl-C that stops a reply and keeps
the session. Conversations land in the store the UI reads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.store import ConversationStore
from app.terminal_chat import ReplyPrinter, next_message

REPO = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "ITAMAE_HOME": str(home)}


def _itamae(args, home, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(home),
        cwd=REPO,
        timeout=300,
    )


def test_piped_messages_get_the_demos_replies_and_are_stored(tmp_path):
    home = tmp_path / "home"
    plain = _itamae(["chat", "--model", "demo"], home, "Hello\n")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip()
    # Greedy with no repeat penalty, the request `generate --chat` makes: the same text.
    chat = _itamae(
        ["chat", "--model", "demo", "--repeat-penalty", "1", "--max-tokens", "48"],
        home,
        "Hello\n/system Answer briefly.\nWhat is an itamae?\n",
    )
    assert chat.returncode == 0, chat.stderr
    generated = _itamae(
        [
            "generate",
            "--model",
            "demo",
            "--chat",
            "--prompt",
            "Hello",
            "--max-tokens",
            "48",
            "--json",
        ],
        home,
    )
    want = json.loads(generated.stdout)["text"].strip()
    assert chat.stdout.startswith(want + "\n")
    assert "tokens" in chat.stderr and "tokens" not in chat.stdout  # stats stay off stdout
    store = ConversationStore(home / "conversations.sqlite3")
    first, second = store.conversations()[1], store.conversations()[0]
    assert [m.content for m in store.messages(first.id)][0] == "Hello"
    (conv,) = [c for c in (first, second) if c.system_prompt]
    messages = store.messages(conv.id)
    assert (conv.model, conv.system_prompt) == ("demo", "Answer briefly.")
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1].content.strip() == want
    assert all(m.finish_reason in ("stop", "length") for m in messages)


class Terminal:
    """A child process on a pseudo-terminal, the way a person's terminal runs it."""

    def __init__(self, argv, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its session's controlling terminal is the pty
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, *argv], env)
        self.output = ""

    def expect(self, text: str, timeout: float = 120.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in {self.output[-2000:]!r}")
            self._read(0.2)
        return self.output

    def grows(self, chars: int, timeout: float = 120.0) -> None:
        start, deadline = len(self.output), time.monotonic() + timeout
        while len(self.output) < start + chars:
            assert time.monotonic() < deadline, f"no output after {self.output[-500:]!r}"
            self._read(0.2)

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read(self, wait: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            with contextlib.suppress(OSError):  # the child closed the terminal
                self.output += os.read(self.fd, 65536).decode(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"did not exit: {self.output[-1000:]!r}")


def test_repl_history_multiline_and_ctrl_c_stops_a_reply(hf_checkpoint, tmp_path):
    # A random-weight fixture never wants to stop, so a reply runs until Ctrl-C.
    model = hf_checkpoint("olmoe")
    env = _env(tmp_path / "home") | {"TERM": "xterm"}
    term = Terminal(
        [
            "-m",
            "app.cli",
            "chat",
            "--model",
            str(model),
            "--max-tokens",
            "4000",
            "--temperature",
            "1",
            "--seed",
            "7",
        ],
        env,
    )
    term.expect(">>> ")
    term.send("/system Be brief.\r")
    term.expect("System prompt set.")
    term.expect(">>> ", count=2)
    term.send("\x1b[A\r")  # up arrow: readline brings back the last line
    term.expect("System prompt set.", count=2)
    term.expect(">>> ", count=3)
    term.send('"""\rline one\rline two\r"""\r')
    term.grows(200)  # the reply streams...
    term.send("\x03")  # ...until Ctrl-C
    term.expect("stopped")
    term.expect(">>> ", count=4)
    term.send("and then?\r")
    term.grows(200)
    term.send("\x03")
    term.expect("stopped", count=2)
    term.expect(">>> ", count=5)
    term.send("/exit\r")
    assert term.wait() == 0

    store = ConversationStore(tmp_path / "home" / "conversations.sqlite3")
    (conv,) = store.conversations()
    messages = store.messages(conv.id)
    assert conv.system_prompt == "Be brief."
    assert [(m.role, m.finish_reason) for m in messages] == [
        ("user", "stop"),
        ("assistant", "cancelled"),
        ("user", "stop"),
        ("assistant", "cancelled"),
    ]
    assert messages[0].content == "line one\nline two" and messages[2].content == "and then?"
    assert len(messages[1].content) > 50  # the reply up to Ctrl-C was kept


def _reader(lines):
    it = iter(lines)
    return lambda prompt: next(it, None)


def test_multi_line_messages():
    read = _reader(['"""', "line one", "line two", '"""', "a \\", "b", '"""one"""', '"""x', 'y"""'])
    assert [next_message(read) for _ in range(5)] == [
        "line one\nline two",
        "a \nb",
        "one",
        "x\ny",
        None,
    ]


@pytest.mark.parametrize(
    "pieces, color, want",
    [
        (
            ["<th", "ink>reason", "ing</t", "hink>\n\nAns", "wer <b>"],
            True,
            "\x1b[2mreason\x1b[0m\x1b[2ming\x1b[0m\nAnswer <b>",
        ),
        (["<think>reasoning</think>", "\nAnswer"], False, "Answer"),  # piped: answer only
        (["Answer <", "/b> <t"], False, "Answer </b> <t"),  # held back, then flushed
    ],
)
def test_reply_printer_dims_reasoning_and_never_prints_half_a_tag(pieces, color, want):
    out = io.StringIO()
    printer = ReplyPrinter(out, color=color, show_reasoning=color)
    text = ""
    for piece in pieces:
        text += piece
        printer.feed(text)
    printer.finish(text)
    assert out.getvalue() == want
