"""Crash safety (issue #10): SIGKILL a real conversion and a real streaming chat reply.

1. `itamae convert` (the CLI, in its own process) is killed with SIGKILL while it writes a
   Q8_0 GGUF of a fixture checkpoint (caught while its temporary `.NAME.partial-PID`
   file exists and grows). Nothing exists under the final name afterwards, and running the
   same command again succeeds, removes the dead process's leftover and writes a GGUF
   that llama.cpp's header reader and gguf-py accept.
2. A process running the app's own chat path (app.ui_chat._stream_reply with a real
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
# one reply that streams until the parent kills the process. All through _stream_reply,
# which is what the chat tab runs; "streaming" is printed once the reply has been saved
# at least once (SAVE_EVERY_S) and tokens keep coming.
_CHAT_PROCESS = textwrap.dedent(
    """
    import json, sys, time
    from app.context import AppContext
    from app.i18n import Translator
    from app.model_manager import ModelManager
    from app.settings import AppPaths
    from app.ui_chat import ChatParams, _stream_reply

    class Session:
        conversation_id = None
        cancel = None

    ctx = AppContext.create(ModelManager(), AppPaths.default())
    ctx.manager.load(sys.argv[1], "llamacpp", wait=True)
    tr = Translator("en")
    short = ChatParams("", 0.0, 1.0, 0, 0.0, 1.0, 8, 1, 0)
    done = {}
    for c in range(3):
        session = Session()
        session.conversation_id = ctx.store.create(f"conversation {c}", "").id
        for turn in range(2):
            question = f"question {c}.{turn} 質問"
            ctx.store.append(session.conversation_id, "user", question, "stop")
            for _ in _stream_reply(ctx, session, short, tr):
                pass
        done[session.conversation_id] = [
            (m.role, m.content, m.finish_reason) for m in ctx.store.messages(session.conversation_id)
        ]
    print(json.dumps(done), flush=True)

    session = Session()
    session.conversation_id = ctx.store.create("the one that is cut off", "").id
    ctx.store.append(session.conversation_id, "user", "tell me a long story", "stop")
    long = ChatParams("", 1.0, 1.0, 0, 0.0, 1.0, 100000, 7, 0)
    started = time.monotonic()
    announced = False
    for _ in _stream_reply(ctx, session, long, tr):
        if not announced and time.monotonic() - started > 1.5:
            print("streaming", flush=True)
            announced = True
    print("finished", flush=True)  # the model stopped on its own: the test retries
    """
)


@pytest.fixture(scope="module")
def chat_gguf(hf_checkpoint, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from converters.convert import convert

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
        assert done_line.startswith("{"), proc.stderr.read()[-3000:] if proc.poll() else done_line
        done = json.loads(done_line)
        said = proc.stdout.readline().strip()
        assert said == "streaming", f"the long reply ended on its own ({said!r})"
        time.sleep(0.7)  # past another save of the growing reply
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
