"""The chat's branch bar and attachment chips, without a browser: which message the
"‹ 2 / 3 ›" bar steps through, where a step lands, and how a message with files shows."""

from __future__ import annotations

import pytest

from app.attachments import Attachment, message_with_attachments
from app.i18n import Translator
from app.store import ConversationStore
from app.ui.chat_branches import bar_values, branch_target, step
from app.ui.chat_view import to_chatbot, typed_text, user_content


@pytest.fixture
def store(tmp_path):
    return ConversationStore(tmp_path / "conversations.sqlite3")


def _three_replies(store):
    conv = store.create("Q")
    question = store.append(conv.id, "user", "Q", "stop")
    for text in ("A1", "A2", "A3"):
        store.rewind(conv.id, question.id)
        store.append(conv.id, "assistant", text, "stop")
    return conv


def test_the_bar_steps_through_the_last_message_with_alternatives(store):
    conv = _three_replies(store)
    path = store.messages(conv.id)
    assert branch_target(path, None).content == "A3"
    row, label = bar_values(path, None, Translator("en"))
    assert row["visible"] and "Reply 3 / 3" in label
    first = step(path, None, -2)
    assert [m.content for m in store.switch(first)] == ["Q", "A1"]
    assert step(store.messages(conv.id), None, -1) == first  # clamped at the first
    assert "返答 1 / 3" in bar_values(store.messages(conv.id), None, Translator("ja"))[1]


def test_a_clicked_message_is_the_one_the_bar_steps(store):
    conv = _three_replies(store)
    question = store.messages(conv.id)[0]
    edited = store.fork(question.id, "Q again")
    store.append(conv.id, "assistant", "B1", "stop")
    path = store.messages(conv.id)
    assert branch_target(path, None).id == edited.id  # the only fork on this path
    assert "Message 2 / 2" in bar_values(path, edited.id, Translator("en"))[1]
    store.switch(step(path, edited.id, -1))
    path = store.messages(conv.id)
    assert [m.content for m in path] == ["Q", "A3"]  # the branch as last shown
    assert branch_target(path, question.id).id == question.id
    assert branch_target(path, None).content == "A3"  # unclicked: the last fork


def test_no_alternatives_no_bar(store):
    conv = store.create("Q")
    store.append(conv.id, "user", "Q", "stop")
    row, label = bar_values(store.messages(conv.id), None, Translator("en"))
    assert row["visible"] is False and label == ""


def test_replies_show_their_place_and_files_show_as_chips(store):
    conv = _three_replies(store)
    shown = to_chatbot(store.messages(conv.id), Translator("en")).messages
    assert '<span class="reply-stats">3 / 3</span>' in shown[-1]["content"]
    content = message_with_attachments("Summarise.", [Attachment("a <b>.md", "# x", 12)])
    html = user_content(content, Translator("ja"))
    assert html.startswith('<span class="attachment-chip">📎 a &lt;b&gt;.md ')
    assert "12 トークン" in html and "# x" not in html and html.endswith("Summarise.")
    assert typed_text(html) == "Summarise."
    assert user_content("plain", Translator("en")) == "plain"
