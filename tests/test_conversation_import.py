"""Importing conversations from Itamae's, ChatGPT's and Open WebUI's exports, branches
kept. The two foreign files in tests/data follow those exports' real shape (ChatGPT's
`conversations.json` mapping tree; Open WebUI's list of chat records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.conversation_import import import_file, parse_export
from app.store import ConversationStore, export_json
from converters.core.errors import ItamaeError

DATA = Path(__file__).parent / "data"


@pytest.fixture
def store(tmp_path):
    return ConversationStore(tmp_path / "conversations.sqlite3")


def _contents(messages):
    return [m.content for m in messages]


def test_chatgpt_export_keeps_branches_and_the_current_node(store):
    (conv,) = import_file(store, DATA / "chatgpt_conversations.json")
    assert (conv.title, conv.model, conv.created) == ("Sushi rice", "gpt-4o", 1717000000.123)
    path = store.messages(conv.id)
    # current_node a-2: the code and tool nodes between are left out.
    assert _contents(path) == [
        "How much vinegar for sushi rice?",
        "60 ml of rice vinegar: 4 tablespoons.",
    ]
    assert [m.role for m in path] == ["user", "assistant"]
    assert len(path[1].alternatives) == 2  # a-1 and (through the tool call) a-2
    first_reply = store.switch(path[1].alternatives[0])
    assert first_reply[-1].content == "About 4 tablespoons per 2 cups of rice."
    edited = store.switch(path[0].alternatives[1])  # the second first message
    assert _contents(edited) == ["寿司酢の割合は？", "酢5：砂糖3：塩1 が目安です。"]
    assert [c.id for c in store.conversations("寿司酢")] == [conv.id]


def test_open_webui_export_keeps_branches_and_the_system_prompt(store):
    (conv,) = import_file(store, DATA / "open_webui_export.json")
    assert (conv.title, conv.system_prompt, conv.model) == (
        "Knife care",
        "You are a sushi chef.",
        "qwen3:30b-a3b",
    )
    path = store.messages(conv.id)
    assert _contents(path) == [
        "How do I sharpen a yanagiba?",
        "<think>single bevel</think>Sharpen the bevel side on a whetstone.",
        "And the back (ura)?",
    ]
    assert path[0].created == 1718000000
    other = store.switch(path[1].alternatives[0])
    assert other[-1].content == "Use a 1000 grit whetstone first."


def test_itamae_export_round_trips_the_tree(store, tmp_path):
    conv = store.create("Hello")
    store.append(conv.id, "user", "Hello", "stop")
    store.append(conv.id, "assistant", "Hi!", "stop", {"completion_tokens": 2})
    hello = store.messages(conv.id)[0]
    store.fork(hello.id, "Bonjour")
    store.append(conv.id, "assistant", "Salut !", "stop")
    store.switch(hello.id)
    exported = tmp_path / "hello.json"
    exported.write_text(export_json(store.export(conv.id)), encoding="utf-8")
    (copy,) = import_file(store, exported)
    assert copy.id != conv.id and copy.title == "Hello"
    assert _contents(store.messages(copy.id)) == ["Hello", "Hi!"]
    assert store.messages(copy.id)[1].stats == {"completion_tokens": 2}

    def shape(cid):
        tree = store.export(cid).messages
        by_id = {m.id: m.content for m in tree}
        return [(m.content, by_id.get(m.parent_id)) for m in tree]

    assert shape(copy.id) == shape(conv.id)


def test_first_release_export_imports_as_one_path():
    flat = {
        "id": "x",
        "title": "Old",
        "system_prompt": "Be brief.",
        "model": "demo",
        "created": 1.0e9,
        "updated": 1.0e9 + 5,
        "messages": [
            {
                "role": "user",
                "content": "Hi",
                "finish_reason": "stop",
                "stats": None,
                "created": 1.0e9,
            },
            {
                "role": "assistant",
                "content": "Hello",
                "finish_reason": "stop",
                "stats": {"ttft_s": 0.1},
                "created": 1.0e9 + 1,
            },
        ],
    }
    (imported,) = parse_export(json.dumps(flat))
    assert [(m.content, m.parent_key) for m in imported.messages] == [("Hi", None), ("Hello", "#0")]
    assert imported.active_key == "#1" and imported.conversation.system_prompt == "Be brief."


@pytest.mark.parametrize(
    "text, problem",
    [
        ("not json", "is not JSON"),
        ("[]", "holds no conversations"),
        ('{"a": 1}', "not a conversation export"),
    ],
)
def test_files_that_are_not_exports_are_refused_with_a_hint(text, problem):
    with pytest.raises(ItamaeError) as e:
        parse_export(text, "x.json")
    assert problem in str(e.value) and "conversations.json" in e.value.hint
