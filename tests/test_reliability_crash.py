"""Crash safety (issue #10): SIGKILL a real conversion and a real streaming chat reply.

1. `itamae convert` (the CLI, in its own process) is killed with SIGKILL while it writes a
   Q8_0 GGUF of a fixture checkpoint (caught while its temporary `.NAME.partial-PID`
   file exists and grows). Nothing exists under the final name afterwards, and running the
   same command again succeeds, removes the dead process's leftover and writes a GGUF
   that llama.cpp's header reader and gguf-py accept.
2. A process running the app's own chat path (app.chat_reply.stream_reply, what the chat
   tab runs, with a real
   AppContext: ModelManager + the llama.cpp engine on a converted fixture, ConversationStore
   in an ITAMAE_HOME) holds earlier conversations written by that same path, then is killed
   with SIGKILL while a long reply streams. Reopened, the store passes SQLite's integrity
   check and every earlier conversation is intact; the reply cut off is marked as such.
   tests/test_store.py kills a bare store writer; this kills the chat path with a model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.store import ConversationStore

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _itamae(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def test_sigkill_mid_conversion_leaves_no_final_file_and_a_rerun_succeeds(hf_checkpoint, tmp_path):
    source = hf_checkpoint("deepseek_v3")  # the largest fixture: the longest write
    out = tmp_path / "out"
    out.mkdir()
    final = out / "model-Q8_0.gguf"
    command = _itamae("convert", str(source), "-o", str(final), "--quant", "Q8_0")
    killed_while = None
    for _attempt in range(5):  # a busy machine may finish a tiny conversion between polls
        proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                partial = [p for p in out.iterdir() if p.name.startswith(f".{final.name}.")]
                if partial and partial[0].stat().st_size > 0:
                    proc.send_signal(signal.SIGKILL)
                    killed_while = partial[0].name
                    break
                time.sleep(0.002)
        finally:
            if proc.poll() is None and killed_while is None:
                proc.kill()
            proc.wait()
        if killed_while:
            break
        final.unlink(missing_ok=True)
    assert killed_while, "the conversion always finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists(), "a killed conversion left a file under the final name"
    assert all(p.name.startswith(".") for p in out.iterdir())  # only the hidden temporary

    rerun = subprocess.run(command + ["--json"], cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1])
    assert [p.name for p in out.iterdir()] == [final.name]  # the leftover was removed

    import gguf

    from engine.llamacpp.gguf_layout import read_gguf

    header = read_gguf(final)
    assert header.layout.n_experts > 0 and header.metadata["general.architecture"] == "deepseek2"
    assert len(gguf.GGUFReader(final).tensors) == len(header.tensors)


# The app's chat path in its own process: 6 finished exchanges over 3 conversations, then
# one reply that streams until the parent kills the process. All through stream_reply,
# which is what the chat tab runs; "streaming" is printed once the reply has been saved
# at least once (SAVE_EVERY_S) and tokens keep coming.
_CHAT_PROCESS = textwrap.dedent(
    """
    import json, sys, threading, time
    from app.chat_reply import ChatParams, stream_reply
    from app.context import AppContext
    from app.model_manager import ModelManager
    from app.settings import AppPaths

    ctx = AppContext.create(ModelManager(), AppPaths.default())
    ctx.manager.load(sys.argv[1], "llamacpp", wait=True)
    short = ChatParams("", 0.0, 1.0, 0, 0.0, 1.0, 8, 1, 0)
    done = {}
    for c in range(3):
        conv = ctx.store.create(f"conversation {c}", "").id
        for turn in range(2):
            ctx.store.append(conv, "user", f"question {c}.{turn} 質問", "stop")
            for _ in stream_reply(ctx.store, ctx.manager, conv, short, threading.Event()):
                pass
        done[conv] = [(m.role, m.content, m.finish_reason) for m in ctx.store.messages(conv)]
    print(json.dumps(done), flush=True)

    # a reply long enough to be killed mid-stream: the tiny model may stop early on a seed,
    # so seeds are tried until one is still streaming after 0.4 s (saved by then)
    for seed in range(100):
        conv = ctx.store.create("the one that is cut off", "").id
        ctx.store.append(conv, "user", "tell me a long story", "stop")
        long = ChatParams("", 1.0, 1.0, 0, 0.0, 1.0, 100000, seed, 0)
        started = time.monotonic()
        for update in stream_reply(ctx.store, ctx.manager, conv, long, threading.Event()):
            if time.monotonic() - started > 0.4:
                print("streaming", flush=True)
                time.sleep(600)  # the parent kills the process here, mid-reply
        ctx.store.delete(conv)  # ended on its own: not the case under test
    print("finished", flush=True)  # no seed gave a long reply
    """
)


@pytest.fixture(scope="module")
def chat_gguf(hf_checkpoint, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from converters.conversion.convert import convert

    path = tmp_path_factory.mktemp("crash") / "chat-Q8_0.gguf"
    convert(hf_checkpoint("qwen3_moe"), path, "Q8_0")
    return path


def test_sigkill_while_a_reply_streams_keeps_every_earlier_conversation(chat_gguf, tmp_path):
    home = tmp_path / "home"
    env = {**ENV, "ITAMAE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", _CHAT_PROCESS, str(chat_gguf)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        done_line = proc.stdout.readline()
        if not done_line.startswith("{"):
            proc.wait(timeout=30)
            raise AssertionError(f"the chat process failed:\n{proc.stderr.read()[-3000:]}")
        done = json.loads(done_line)
        said = proc.stdout.readline().strip()
        assert said == "streaming", f"the long reply ended on its own ({said!r})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = ConversationStore(home / "conversations.sqlite3")
    assert store.check() == "ok"
    conversations = {c.id: c for c in store.conversations()}
    assert len(conversations) == 4
    for conv_id, messages in done.items():
        stored = [(m.role, m.content, m.finish_reason) for m in store.messages(conv_id)]
        assert stored == [tuple(m) for m in messages]
        assert [r for r, _, _ in stored] == ["user", "assistant"] * 2
        assert all(f in ("stop", "length") for _, _, f in stored)
    (cut,) = [c for c in conversations if c not in done]
    user, reply = store.messages(cut)
    assert user.content == "tell me a long story"
    assert reply.interrupted and reply.content, "the saved part of the cut reply is kept"
