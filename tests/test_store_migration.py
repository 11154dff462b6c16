"""Up-migrations: a database the first release wrote opens in this one with every
conversation, message, stat and interruption as it was.

tests/data/conversations_v1.sqlite3 was written by the first release's store
(app/store.py at commit d075915, schema 1, `git show d075915:app/store.py`): four
conversations (English with stats; Japanese with a reasoning block and an interrupted
reply; one regenerated the old way, by truncating; an empty one) and a deleted one.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from app.store import SCHEMA_VERSION, ConversationStore, StoreError

V1_FILE = Path(__file__).parent / "data" / "conversations_v1.sqlite3"


@pytest.fixture
def v1_db(tmp_path) -> Path:
    db = tmp_path / "conversations.sqlite3"
    shutil.copy(V1_FILE, db)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    return db


def test_every_conversation_of_a_v1_file_survives(v1_db):
    store = ConversationStore(v1_db)
    assert store.migrated_from == 1
    with sqlite3.connect(v1_db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    by_title = {c.title: c for c in store.conversations()}
    assert set(by_title) == {"Sushi question", "天気について", "regenerated once", "empty"}
    sushi = by_title["Sushi question"]
    assert (sushi.system_prompt, sushi.model) == ("Be brief.", "demo")
    messages = store.messages(sushi.id)
    assert [(m.position, m.role, m.content) for m in messages] == [
        (0, "user", "What is an itamae?"),
        (1, "assistant", "A sushi chef at the counter."),
        (2, "user", "And a nigiri?"),
        (3, "assistant", "Rice pressed by hand, topped with fish."),
    ]
    assert messages[1].stats == {"completion_tokens": 7, "ttft_s": 0.1}
    assert [m.parent_id for m in messages] == [None] + [m.id for m in messages[:-1]]
    japanese = store.messages(by_title["天気について"].id)
    assert [m.content for m in japanese][1] == "<think>天気を考える</think>はい、晴れです。"
    assert japanese[-1].interrupted and not japanese[1].interrupted
    # Truncating left a gap in positions (message 10 was deleted): depth is recounted.
    joke = store.messages(by_title["regenerated once"].id)
    assert [(m.position, m.content) for m in joke] == [(0, "Tell me a joke"), (1, "second joke")]
    assert store.messages(by_title["empty"].id) == []
    assert store.check() == "ok"


def test_a_migrated_file_is_searchable_and_grows_as_a_tree(v1_db):
    store = ConversationStore(v1_db)
    (japanese,) = store.conversations("晴れです")  # through the FTS index, rebuilt
    assert japanese.title == "天気について"
    assert [c.title for c in store.conversations("雨")] == ["天気について"]  # short: LIKE
    joke = next(c for c in store.conversations() if c.title == "regenerated once")
    reply = store.messages(joke.id)[-1]
    store.rewind(joke.id, reply.parent_id)
    store.append(joke.id, "assistant", "third joke", "stop")
    path = store.messages(joke.id)
    assert path[-1].alternatives == (reply.id, path[-1].id)
    store.append(joke.id, "user", "another", "stop")
    assert store.messages(joke.id)[-1].position == 2


def test_opening_twice_at_once_migrates_once(v1_db):
    errors = []

    def open_store():
        try:
            ConversationStore(v1_db)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = ConversationStore(v1_db)
    assert store.migrated_from == SCHEMA_VERSION
    assert len(store.conversations()) == 4


def test_a_file_from_a_newer_itamae_is_refused_untouched(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    ConversationStore(db)
    with sqlite3.connect(db) as raw:
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError) as e:
        ConversationStore(db)
    assert "newer Itamae" in str(e.value)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
