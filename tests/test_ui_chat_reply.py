"""The chat's reply writer on a real model (the qwen3_moe fixture through the torch
engine, behind the shared ModelManager): stored as it grows, stopped by Stop, recorded
as stopped when the tab goes away, and a clear message when no model is loaded. Also
what it does around a reply (the person's message saved, regenerate, edit), reasoning
blocks, and the conversation as the model sees it; all without Gradio."""

from __future__ import annotations

import threading

import pytest

from app.attachments import Attachment, split_attachments
from app.chat_reply import (
    ChatParams,
    edit_message,
    history_for_model,
    model_unavailable,
    rewind_last_reply,
    send_message,
    stream_reply,
)
from app.i18n import Translator
from app.model_manager import ModelManager
from app.store import ConversationStore
from engine.reasoning import split_reasoning


def params(max_tokens: int = 32, experts: int = 0) -> ChatParams:
    return ChatParams("", 0.0, 1.0, 0, 0.0, 1.0, max_tokens, -1, experts)


@pytest.fixture(scope="module")
def manager(hf_checkpoint):
    manager = ModelManager()
    manager.load(hf_checkpoint("qwen3_moe"), "torch", wait=True)
    assert manager.status.state == "ready", manager.status
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


# -- around a reply: what the chat tab's buttons do to the conversation -----------------


def test_sending_saves_the_message_in_a_titled_conversation(manager, store):
    conv = send_message(store, manager, None, "寿司の話をしよう", "Be brief.")
    saved = store.get(conv)
    assert saved.title == "寿司の話をしよう" and saved.system_prompt == "Be brief."
    assert saved.model == manager.status.message != ""  # which model answers
    assert [(m.role, m.content, m.finish_reason) for m in store.messages(conv)] == [
        ("user", "寿司の話をしよう", "stop")
    ]
    # the open conversation takes the next message, and the system prompt shown now
    assert send_message(store, manager, conv, "Next", "Be kind.") == conv
    assert store.get(conv).system_prompt == "Be kind."
    assert [m.content for m in store.messages(conv)] == ["寿司の話をしよう", "Next"]
    # deleted meanwhile (in another browser tab): the message starts a new conversation
    store.delete(conv)
    again = send_message(store, manager, conv, "Again", "")
    assert again != conv and [m.content for m in store.messages(again)] == ["Again"]


def test_regenerating_rewinds_past_the_last_reply_and_keeps_it(store):
    conv = conversation(store, "Q1")
    store.append(conv, "assistant", "A1", "stop")
    store.append(conv, "user", "Q2", "stop")
    store.append(conv, "assistant", "A2", "stop")
    store.append(conv, "user", "Q3", "stop")  # an edit whose reply never came
    assert rewind_last_reply(store, conv)
    assert [m.content for m in store.messages(conv)] == ["Q1", "A1", "Q2"]
    store.append(conv, "assistant", "A2 again", "stop")  # the regenerated reply
    path = store.messages(conv)
    assert [store.switch(i)[-1].content for i in path[-1].alternatives] == ["Q3", "A2 again"]
    only_question = conversation(store, "Q")
    assert rewind_last_reply(store, only_question)  # nothing to drop, still one to answer
    assert [m.content for m in store.messages(only_question)] == ["Q"]
    assert not rewind_last_reply(store, None)
    assert not rewind_last_reply(store, store.create("empty").id)


def test_editing_forks_with_the_new_text_and_keeps_the_old_branch(store):
    conv = conversation(store, "Q1")
    store.append(conv, "assistant", "A1", "stop")
    store.append(conv, "user", "Q2", "stop")
    store.append(conv, "assistant", "A2", "stop")
    assert not edit_message(store, conv, 1, "not mine")  # a reply is not the person's
    assert not edit_message(store, conv, 9, "nowhere")
    assert [m.content for m in store.messages(conv)] == ["Q1", "A1", "Q2", "A2"]
    assert edit_message(store, conv, 2, "Q2, better")
    stored = store.messages(conv)
    assert [(m.content, m.finish_reason) for m in stored] == [
        ("Q1", "stop"),
        ("A1", "stop"),
        ("Q2, better", "stop"),
    ]
    old = store.switch(stored[-1].alternatives[0])
    assert [m.content for m in old] == ["Q1", "A1", "Q2", "A2"]


# -- what the model sees -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "thinking", "answer", "done"),
    [
        ("Hello", None, "Hello", True),
        ("<think>plan</think>Answer", "plan", "Answer", True),  # Qwen3
        ("  <think>\nplan\n</think>\n\nAnswer", "plan", "Answer", True),
        ("<think>still going", "still going", "", False),  # streaming, block open
        (
            "reasoning\n</think>\nAnswer",
            "reasoning",
            "Answer",
            True,
        ),  # R1: <think> was in the prompt
        ("<thi", None, "", True),  # the tag is still arriving: show nothing yet
        ("a < b and </p>", None, "a < b and </p>", True),
        # gpt-oss (Harmony): the analysis channel is the thinking, the final channel the answer
        (
            "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final"
            "<|message|>答えです。",
            "Think.",
            "答えです。",
            True,
        ),
        ("<|channel|>analysis<|message|>still thin", "still thin", "", False),
        ("<|channel|>analysis<|message|>done<|end|>", "done", "", True),
        ("<|channel|>final<|message|>Straight answer<|return|>", None, "Straight answer", True),
        ("<|chan", None, "", True),  # Harmony's first token is still arriving
    ],
)
def test_split_reasoning(text, thinking, answer, done):
    parts = split_reasoning(text)
    assert (parts.thinking, parts.answer, parts.thinking_done) == (thinking, answer, done)


def test_history_for_model_keeps_only_harmonys_final_channel(store):
    conv = conversation(store, "Q1")
    reply = "<|channel|>analysis<|message|>secret plan<|end|><|start|>assistant<|channel|>final<|message|>A1"
    store.append(conv, "assistant", reply, "stop")
    store.append(conv, "user", "Q2", "stop")
    history = history_for_model(store.messages(conv), "")
    assert [(m.role, m.content) for m in history][-2:] == [("assistant", "A1"), ("user", "Q2")]


def test_history_for_model_drops_reasoning_and_failures(store):
    conv = conversation(store, "Q1")
    store.append(conv, "assistant", "<think>x</think>A1", "stop")
    store.append(conv, "user", "Q2", "stop")
    store.append(conv, "assistant", "backend crashed", "error")
    store.append(conv, "user", "Q3", "stop")
    history = history_for_model(store.messages(conv), "Be brief.")
    assert [(m.role, m.content) for m in history] == [
        ("system", "Be brief."),
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
        ("user", "Q3"),
    ]


def test_attached_files_go_with_the_message_and_stay_through_an_edit(store):
    manager = ModelManager()
    files = [Attachment("notes.md", "# 寿司飯\n米2合", 9)]
    conv = send_message(store, manager, None, "Summarise.", "", files)
    (question,) = store.messages(conv)
    assert question.content.startswith('<attachment name="notes.md" tokens="9">\n# 寿司飯')
    assert history_for_model(store.messages(conv), "")[0].content == question.content
    untitled = send_message(store, manager, None, "", "", files)  # only a file
    assert store.get(untitled).title == "notes.md"
    edit_message(store, conv, 0, "Translate it.")
    text, kept = split_attachments(store.messages(conv)[0].content)
    assert (text, kept) == ("Translate it.", files)
