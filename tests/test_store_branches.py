"""Branches and search in the conversation store: regenerate adds an alternative,
edit forks, the model's path is the one shown, export writes the whole tree, and
search finds English words and Japanese substrings with the hits marked."""

from __future__ import annotations

import json

import pytest

from app.store import ConversationStore, export_json, export_markdown, snippet_html
from app.store.search import HIT_END, HIT_START


@pytest.fixture
def store(tmp_path):
    return ConversationStore(tmp_path / "conversations.sqlite3")


def _chat(store, *turns):
    conv = store.create(turns[0])
    for i, text in enumerate(turns):
        store.append(conv.id, "user" if i % 2 == 0 else "assistant", text, "stop")
    return conv


def _contents(store, conv):
    return [m.content for m in store.messages(conv.id)]


def test_regenerate_adds_alternatives_and_each_stays_reachable(store):
    conv = _chat(store, "Tell me a joke", "first joke")
    first = store.messages(conv.id)[-1]
    for text in ("second joke", "third joke"):
        store.rewind(conv.id, first.parent_id)
        assert _contents(store, conv) == ["Tell me a joke"]  # what the model sees next
        store.append(conv.id, "assistant", text, "stop")
    last = store.messages(conv.id)[-1]
    assert last.alternatives == (first.id, first.id + 1, first.id + 2)
    assert last.alternatives.index(last.id) + 1 == 3  # "3 / 3"
    path = store.switch(first.id)
    assert [m.content for m in path] == ["Tell me a joke", "first joke"]
    assert _contents(store, conv) == ["Tell me a joke", "first joke"]


def test_edit_forks_and_switching_back_restores_the_path_below(store):
    conv = _chat(store, "Hello", "Hi!", "How are you?", "Fine.")
    first = store.messages(conv.id)[0]
    edited = store.fork(first.id, "Good morning")
    assert edited.alternatives == (first.id, edited.id)
    assert _contents(store, conv) == ["Good morning"]
    store.append(conv.id, "assistant", "Morning!", "stop")
    store.switch(first.id)
    assert _contents(store, conv) == ["Hello", "Hi!", "How are you?", "Fine."]
    store.switch(edited.id)
    assert _contents(store, conv) == ["Good morning", "Morning!"]


def test_switch_returns_to_the_branch_last_shown_below_a_message(store):
    conv = _chat(store, "Q", "A1")
    a1 = store.messages(conv.id)[-1]
    store.append(conv.id, "user", "follow-up on A1", "stop")
    store.rewind(conv.id, a1.parent_id)
    store.append(conv.id, "assistant", "A2", "stop")
    store.append(conv.id, "user", "follow-up on A2", "stop")
    root = store.messages(conv.id)[0]
    store.switch(a1.id)
    assert _contents(store, conv)[-1] == "follow-up on A1"
    store.switch(root.id)  # from the top: the branch shown last, A1's
    assert _contents(store, conv) == ["Q", "A1", "follow-up on A1"]


def test_truncate_removes_a_branch_with_everything_below_it(store):
    conv = _chat(store, "Q", "A1", "more")
    a1 = store.messages(conv.id)[1]
    store.rewind(conv.id, a1.parent_id)
    store.append(conv.id, "assistant", "A2", "stop")
    store.truncate(conv.id, 1)
    assert _contents(store, conv) == ["Q"]
    assert [m.content for m in store.export(conv.id).messages] == ["Q", "A1", "more"]
    assert not store.search("A2") and store.search("more")  # the index followed


def test_export_writes_the_whole_tree_and_markdown_the_path(store):
    conv = _chat(store, "Hello", "Hi!")
    hello = store.messages(conv.id)[0]
    store.fork(hello.id, "Bonjour")
    store.append(conv.id, "assistant", "Salut !", "stop")
    data = json.loads(export_json(store.export(conv.id)))
    by_id = {m["id"]: m for m in data["messages"]}
    assert [m["content"] for m in data["messages"]] == ["Hello", "Hi!", "Bonjour", "Salut !"]
    leaf = by_id[data["active_id"]]
    assert (leaf["content"], by_id[leaf["parent_id"]]["content"]) == ("Salut !", "Bonjour")
    assert by_id[data["messages"][1]["parent_id"]]["content"] == "Hello"
    md = export_markdown(store.export(conv.id))
    assert "Bonjour" in md and "Hello" not in md.split("\n", 1)[1]


def test_search_finds_japanese_substrings_and_english_words_marked(store):
    ja = _chat(store, "天気", "今日は東京で晴れのち曇りです。")
    en = _chat(store, "Kitchen", "The Itamae slices fish at the counter.")
    hits = store.search("晴れのち")
    assert [(h.conversation_id, h.snippet) for h in hits] == [
        (ja.id, f"今日は東京で{HIT_START}晴れのち{HIT_END}曇りです。")
    ]
    assert [h.conversation_id for h in store.search("itamae")] == [en.id]  # any case
    assert store.search("slices fish")[0].snippet.count(HIT_START) == 2  # every term
    assert store.search("fish 東京") == []  # all terms in one message
    assert [c.id for c in store.conversations("counter")] == [en.id]


def test_one_and_two_character_queries_still_find_japanese(store):
    ja = _chat(store, "質問", "猫が好きです")
    (hit,) = store.search("猫")
    assert (hit.conversation_id, hit.snippet) == (ja.id, f"{HIT_START}猫{HIT_END}が好きです")
    assert [h.conversation_id for h in store.search("好き")] == [ja.id]
    assert [h.message_id for h in store.search("質問")] == [None, store.messages(ja.id)[0].id]


def test_snippet_html_escapes_text_and_marks_hits(store):
    _chat(store, "x", "<b>sushi</b> & rice")
    (hit,) = store.search("sushi")
    assert snippet_html(hit.snippet) == "&lt;b&gt;<mark>sushi</mark>&lt;/b&gt; &amp; rice"
