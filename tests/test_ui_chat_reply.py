"""The chat's reply writer on a real model (the qwen3_moe fixture through the torch
engine, behind the shared ModelManager): stored as it grows, stopped by Stop, recorded
as stopped when the tab goes away, and a clear message when no model is loaded."""

from __future__ import annotations

import threading

import pytest

from app.chat_reply import ChatParams, model_unavailable, stream_reply
from app.i18n import Translator
from app.model_manager import ModelManager
from app.store import ConversationStore


def params(max_tokens: int = 32, experts: int = 0) -> ChatParams:
    return ChatParams("", 0.0, 1.0, 0, 0.0, 1.0, max_tokens, -1, experts)


@pytest.fixture(scope="module")
def manager(hf_checkpoint):
    manager = ModelManager()
    manager.load(hf_checkpoint("qwen3_moe"), "torch", wait=True)
    assert manager.status["state"] == "ready", manager.status
    yield manager
    manager.unload()


@pytest.fixture
def store(tmp_path):
    return ConversationStore(tmp_path / "c.sqlite3")


def conversation(store, text="Hello"):
    conv = store.create(text)
    store.append(conv.id, "user", text, "stop")
    return conv.id


def test_a_reply_streams_and_is_stored_with_its_stats(manager, store):
    conv = conversation(store)
    updates = list(stream_reply(store, manager, conv, params(24), threading.Event()))
    texts = [u.reply.content for u in updates]
    assert texts[0] == "" and texts[-1] and len(set(texts)) > 3  # it grew piece by piece
    assert all(a == b[: len(a)] for a, b in zip(texts, texts[1:], strict=False))
    final = updates[-1]
    assert final.done and final.reply.finish_reason in ("stop", "length")
    (user, reply) = store.messages(conv)
    assert reply.content == final.reply.content and reply.finish_reason == final.reply.finish_reason
    assert reply.stats["completion_tokens"] > 0 and reply.stats["expert_counts"]


def test_stop_midway_keeps_what_was_written(manager, store):
    conv = conversation(store)
    cancel = threading.Event()
    updates = []
    for update in stream_reply(store, manager, conv, params(400), cancel):
        updates.append(update)
        if len(updates) == 5:
            cancel.set()  # the Stop button
    reply = store.messages(conv)[-1]
    assert reply.finish_reason == "cancelled"
    assert 0 < reply.stats["completion_tokens"] < 400
    assert reply.content == updates[-1].reply.content != ""


def test_a_tab_that_goes_away_stops_the_generation(manager, store):
    conv = conversation(store)
    cancel = threading.Event()
    updates = stream_reply(store, manager, conv, params(400), cancel)
    for _ in range(4):
        last = next(updates)
    updates.close()  # what Gradio does with a handler whose page closed
    assert cancel.is_set()
    reply = store.messages(conv)[-1]
    assert reply.finish_reason == "cancelled" and reply.content == last.reply.content
    # the model is free again: the next reply runs at once
    conv2 = conversation(store, "next")
    assert list(stream_reply(store, manager, conv2, params(4), threading.Event()))[-1].done


def test_history_is_what_the_model_sees(manager, store):
    conv = conversation(store, "first")
    list(stream_reply(store, manager, conv, params(4), threading.Event()))
    store.append(conv, "user", "second", "stop")
    updates = list(stream_reply(store, manager, conv, params(4), threading.Event()))
    assert [m.content for m in updates[-1].history if m.role == "user"] == ["first", "second"]
    assert [m.position for m in store.messages(conv)] == [0, 1, 2, 3]


def test_no_model_is_said_plainly(store):
    empty = ModelManager()
    assert "No model is loaded" in model_unavailable(empty, Translator("en"))
    assert "モデルが読み込まれていません" in model_unavailable(empty, Translator("ja"))
    conv = conversation(store)
    final = list(stream_reply(store, empty, conv, params(), threading.Event()))[-1]
    assert final.reply.finish_reason == "error" and "No model" in final.reply.content
