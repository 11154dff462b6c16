"""The conversation store: what a person wrote survives crashes and concurrent tabs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from app.store import (
    ConversationStore,
    StoreError,
    export_json,
    export_markdown,
    title_from_text,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    return ConversationStore(tmp_path / "conversations.sqlite3")


def test_conversation_round_trip(store):
    conv = store.create("こんにちは、元気ですか？", system_prompt="Be brief.")
    store.append(conv.id, "user", "こんにちは、元気ですか？", "stop")
    reply = store.append(conv.id, "assistant", "")
    store.update(reply.id, "<think>greet</think>元気です。", "stop", {"completion_tokens": 5})
    messages = store.messages(conv.id)
    assert [(m.position, m.role, m.content) for m in messages] == [
        (0, "user", "こんにちは、元気ですか？"),
        (1, "assistant", "<think>greet</think>元気です。"),
    ]
    assert messages[1].stats == {"completion_tokens": 5}
    assert not messages[1].interrupted
    assert store.get(conv.id).system_prompt == "Be brief."
    assert store.check() == "ok"


def test_search_rename_delete_truncate(store):
    a = store.create("Sushi question")
    store.append(a.id, "user", "What is an itamae?", "stop")
    b = store.create("天気")
    store.append(b.id, "user", "今日は100% 晴れ_です", "stop")
    assert [c.id for c in store.conversations("itamae")] == [a.id]
    assert [c.id for c in store.conversations("晴れ")] == [b.id]
    # LIKE wildcards in the query are literal text, not patterns
    assert [c.id for c in store.conversations("100%")] == [b.id]
    assert [c.id for c in store.conversations("_")] == [b.id]
    store.rename(a.id, "Renamed")
    assert store.get(a.id).title == "Renamed"
    with pytest.raises(StoreError):
        store.rename(a.id, "   ")
    store.append(a.id, "assistant", "A sushi chef.", "stop")
    store.append(a.id, "user", "More?", "stop")
    store.truncate(a.id, 1)
    assert [m.content for m in store.messages(a.id)] == ["What is an itamae?"]
    store.delete(b.id)
    assert store.get(b.id) is None
    assert store.messages(b.id) == []  # cascade
    with pytest.raises(StoreError):
        store.append(b.id, "user", "into a deleted conversation", "stop")


def test_most_recent_first(store):
    first = store.create("first")
    second = store.create("second")
    time.sleep(0.01)
    store.append(first.id, "user", "bump", "stop")
    assert [c.id for c in store.conversations()] == [first.id, second.id]


def test_title_is_one_short_line():
    assert title_from_text("  hello\n  world ") == "hello world"
    long = title_from_text("x" * 200)
    assert len(long) <= 60 and long.endswith("…")


def test_exports(store):
    conv = store.create("Greeting", system_prompt="Answer in Japanese.", model="demo")
    store.append(conv.id, "user", "Hello", "stop")
    store.append(conv.id, "assistant", "こんにちは", "stop", {"ttft_s": 0.1})
    data = store.export(conv.id)
    parsed = json.loads(export_json(data))
    assert parsed["title"] == "Greeting"
    assert [m["content"] for m in parsed["messages"]] == ["Hello", "こんにちは"]
    assert parsed["messages"][1]["stats"] == {"ttft_s": 0.1}
    md = export_markdown(data, {"user": "あなた"})
    assert md.startswith("# Greeting\n")
    assert "## あなた\n\nHello" in md and "## Assistant\n\nこんにちは" in md
    assert "Answer in Japanese." in md


# A writer that behaves like the chat tab: earlier turns complete, then one reply that
# grows piece by piece (each piece a committed transaction) until the process is killed.
_STREAMING_WRITER = textwrap.dedent(
    """
    import sys
    from app.store import ConversationStore
    store = ConversationStore(sys.argv[1])
    conv = store.create("crash test")
    for i in range(20):
        store.append(conv.id, "user", f"question {i} 質問", "stop")
        store.append(conv.id, "assistant", f"answer {i} 答え", "stop", {"completion_tokens": i})
    store.append(conv.id, "user", "the last question", "stop")
    reply = store.append(conv.id, "assistant", "")
    text = ""
    n = 0
    while True:
        text += f"token{n} "
        store.update(reply.id, text)
        n += 1
        if n == 50:
            print("streaming", flush=True)
    """
)


def test_kill_9_while_a_reply_streams_keeps_every_earlier_message(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _STREAMING_WRITER, str(db)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout.readline().strip() == b"streaming"
        time.sleep(0.2)  # let it get deep into a stream of commits
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = ConversationStore(db)
    assert store.check() == "ok"
    (conv,) = store.conversations()
    messages = store.messages(conv.id)
    assert len(messages) == 42
    for i in range(20):
        user, reply = messages[2 * i], messages[2 * i + 1]
        assert (user.role, user.content, user.finish_reason) == (
            "user",
            f"question {i} 質問",
            "stop",
        )
        assert (reply.content, reply.stats) == (f"answer {i} 答え", {"completion_tokens": i})
    assert messages[40].content == "the last question"
    partial = messages[41]
    assert partial.interrupted
    words = partial.content.split()
    assert len(words) >= 50
    assert words == [f"token{n}" for n in range(len(words))]


def test_two_tabs_do_not_corrupt_each_other(tmp_path):
    """Two writers (as two browser tabs are: separate threads, separate connections)
    stream into their own conversations at once, and both also write into one shared
    conversation; nothing is lost, nothing lands in the wrong conversation."""
    db = tmp_path / "conversations.sqlite3"
    store = ConversationStore(db)
    shared = store.create("shared")
    errors: list[BaseException] = []

    def tab(name: str):
        try:
            tab_store = ConversationStore(db)  # each tab's handlers use their own connections
            conv = tab_store.create(f"tab {name}")
            for turn in range(15):
                tab_store.append(conv.id, "user", f"{name} asks {turn}", "stop")
                reply = tab_store.append(conv.id, "assistant", "")
                text = ""
                for piece in range(5):
                    text += f"{name}{turn}.{piece} "
                    tab_store.update(reply.id, text)
                tab_store.update(reply.id, text, "stop")
                tab_store.append(shared.id, "user", f"{name} {turn}", "stop")
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=tab, args=(n,)) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    by_title = {c.title: c for c in store.conversations()}
    for name in ("A", "B"):
        messages = store.messages(by_title[f"tab {name}"].id)
        assert len(messages) == 30
        for turn in range(15):
            assert messages[2 * turn].content == f"{name} asks {turn}"
            expected = "".join(f"{name}{turn}.{p} " for p in range(5))
            assert messages[2 * turn + 1].content == expected
            assert messages[2 * turn + 1].finish_reason == "stop"
    shared_messages = store.messages(shared.id)
    assert [m.position for m in shared_messages] == list(range(30))
    for name in ("A", "B"):
        mine = [m.content for m in shared_messages if m.content.startswith(name)]
        assert mine == [f"{name} {turn}" for turn in range(15)]
    assert store.check() == "ok"
