"""The UI's pure parts: the chat view, stats, the expert heatmap, the header line, and
the English/Japanese catalogs (every label in both, every key the UI uses exists).
Reasoning blocks and what the model sees are the reply writer's: tests/test_ui_chat_reply.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.i18n import CATALOG_DIR, LANGUAGES, Translator, catalog, pick_language
from app.library import SOURCES
from app.model_manager import ModelStatus
from app.store import StoredMessage
from app.ui import expert_heatmap
from app.ui.chat_view import stats_line, to_chatbot

APP = Path(__file__).resolve().parents[1] / "app"


def msg(position, role, content, finish="stop", stats=None):
    return StoredMessage(position + 1, "c", position, role, content, finish, stats)


def test_chat_view_maps_display_rows_to_stored_messages():
    tr = Translator("en")
    stats = {"completion_tokens": 12, "ttft_s": 0.25, "decode_tps": 31.4}
    stored = [
        msg(0, "user", "Hi"),
        msg(1, "assistant", "<think>greet</think>Hello!", stats=stats),
        msg(2, "user", "And?"),
        msg(3, "assistant", "partial", finish=None),  # the process died mid-reply
    ]
    view = to_chatbot(stored, tr)
    roles = [(m["role"], m["content"]) for m in view.messages]
    assert roles[0] == ("user", "Hi")
    assert view.messages[1]["metadata"] == {"title": "Thought", "status": "done"}
    assert roles[2] == ("assistant", "Hello!")
    assert "12 tokens" in roles[3][1] and "0.25 s" in roles[3][1] and "31.4 tokens/s" in roles[3][1]
    assert roles[4] == ("user", "And?")
    assert roles[5] == ("assistant", "partial")
    assert "Interrupted" in roles[6][1]
    assert view.positions == [0, 1, 1, 1, 2, 3, 3]


def test_live_reply_shows_an_open_thinking_block():
    tr = Translator("ja")
    view = to_chatbot([msg(0, "user", "?"), msg(1, "assistant", "<think>考え", None)], tr, True)
    thinking = view.messages[1]
    assert thinking["metadata"] == {"title": "考え中…", "status": "pending"}
    assert len(view.messages) == 2  # no stats line while streaming


def test_stats_line_in_both_languages():
    stats = {"completion_tokens": 5, "ttft_s": 1.5, "decode_tps": 10.0}
    assert stats_line(stats, "cancelled", Translator("en")) == (
        "5 tokens · first token 1.50 s · 10.0 tokens/s · stopped"
    )
    assert stats_line(stats, "stop", Translator("ja")) == (
        "5 トークン · 最初のトークンまで 1.50 秒 · 10.0 トークン/秒"
    )


def test_heatmap_draws_one_cell_per_layer_and_expert():
    counts = [[0, 3, 1, 0], [4, 0, 0, 0], [1, 1, 1, 1]]
    svg = expert_heatmap.render(counts, Translator("en"))
    assert svg.count("<rect") == 12
    assert "3 MoE layers × 4 experts" in svg
    # the busiest expert of a layer is drawn solid, an unused one faintest (the accent over
    # the page's background, so light and dark mode show the same picture)
    assert 'fill-opacity="1.0"><title>layer 1, expert 0: 4 tokens (100%)' in svg
    assert 'fill-opacity="0.06"><title>layer 1, expert 1: 0 tokens (0%)' in svg
    assert svg.count('fill-opacity="1.0"><title>layer 2,') == 4  # evenly shared: all alike
    assert "heatmap-empty" in expert_heatmap.render(None, Translator("en"))


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("ja-JP,ja;q=0.9,en-US;q=0.8", "ja"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR,fr;q=0.9,ja;q=0.8", "ja"),
        ("de-DE", "en"),
        (None, "en"),
        ("en;q=0.5,ja;q=0.9", "ja"),
    ],
)
def test_language_follows_the_browser(header, lang):
    assert pick_language(header) == lang


def test_every_label_exists_in_both_languages():
    files = sorted(p.stem for p in CATALOG_DIR.glob("*.json"))
    assert files == sorted(LANGUAGES)
    en, ja = catalog("en"), catalog("ja")
    assert set(en) == set(ja)
    for key in en:
        assert en[key].strip() and ja[key].strip(), key
        # the same placeholders, so no translation loses a number or a name
        assert set(re.findall(r"{(\w+)}", en[key])) == set(re.findall(r"{(\w+)}", ja[key])), key
    # Japanese labels are Japanese: most contain kana or kanji (names like Top-p excepted)
    japanese = [k for k, v in ja.items() if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", v)]
    assert len(japanese) > 0.9 * len(ja)


def test_every_key_the_code_uses_is_in_the_catalog():
    used: set[str] = set()
    for path in APP.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r'(?:tr|Key)\(\s*"([a-z_.\-]+)"', text))
    keys = set(catalog("en"))
    assert used, "no keys found: the pattern no longer matches the code"
    assert used <= keys, sorted(used - keys)
    # keys built with f-strings: each family is complete
    for source in SOURCES:
        assert f"models.where.{source}" in keys
    from app.ui.chat_controls import BUILTIN_PRESETS
    from app.ui.library_view import COLUMNS

    for name in BUILTIN_PRESETS:
        assert {f"preset.{name}.name", f"preset.{name}.prompt"} <= keys
    for column in COLUMNS:
        assert f"models.col.{column}" in keys
    assert {"models.deleted", "models.forgotten"} <= keys


def test_built_ui_binds_only_known_keys(tmp_path):
    """Build the real Blocks and check every translated property it registered."""
    from app.context import AppContext
    from app.model_manager import ModelManager
    from app.settings import AppPaths
    from app.ui.labels import Labels
    from app.ui.page import build_ui

    ctx = AppContext.create(ModelManager(), AppPaths(tmp_path))
    labels = Labels()
    build_ui(ctx, labels)
    assert len(labels.components) > 60
    assert labels.keys() <= set(catalog("ja"))
    updates = labels.updates("ja")
    assert len(updates) == len(labels.components)
    assert any(u.get("label") == "チャット" for u in updates)
    assert json.dumps(updates, default=str)  # plain data, ready for the browser


def test_header_status_in_every_state():
    from app.ui.header import status_html

    tr = Translator("en")
    empty = status_html(ModelStatus("empty"), tr)
    assert 'data-state="empty"' in empty and "Open Models to download" in empty
    loading = status_html(ModelStatus("loading", source="/m/q.gguf"), tr, loading_s=12.4)
    assert "Loading /m/q.gguf" in loading and "12 s" in loading and "indeterminate" in loading
    demo = status_html(ModelStatus("ready", source="demo", message="demo"), Translator("ja"))
    assert "同梱の小さなデモモデル" in demo and "ダウンロード" in demo
    error = status_html(ModelStatus("error", message="No model at /x.", source="/x"), tr)
    assert 'data-state="error"' in error and "No model at /x." in error
    # text from model files is escaped, never markup
    hostile = status_html(ModelStatus("ready", message="<img src=x onerror=alert(1)>"), tr)
    assert "<img" not in hostile


def test_chat_params_map_to_a_generation_request():
    from app.chat_reply import ChatParams

    req = ChatParams("Be brief.", 0.0, 0.9, 40, 0.05, 1.1, 256, -1, 0).request([])
    assert req.experts_per_token is None and req.sampling.seed is None  # 0 / -1: the defaults
    assert (req.sampling.temperature, req.sampling.top_k, req.sampling.max_tokens) == (0.0, 40, 256)
    req = ChatParams("", 0.7, 1.0, 0, 0.0, 1.0, 64, 7.0, 3).request([])
    assert req.experts_per_token == 3 and req.sampling.seed == 7


def test_sidebar_export_and_listing(tmp_path):
    from app.context import AppContext
    from app.model_manager import ModelManager
    from app.settings import AppPaths
    from app.ui.conversations import ChatSession, export_file, list_update

    ctx = AppContext.create(ModelManager(), AppPaths(tmp_path))
    conv = ctx.store.create("寿司の話 / sushi: a talk")
    ctx.store.append(conv.id, "user", "おすすめは？", "stop")
    ctx.store.append(conv.id, "assistant", "<think>hm</think>マグロです。", "stop")
    session = ChatSession(conv.id)
    md = Path(export_file(ctx, session, "ja", "md")["value"])
    assert md.suffix == ".md" and "/" not in md.name  # the title's slash cannot make a path
    assert "## あなた\n\nおすすめは？" in md.read_text(encoding="utf-8")
    data = json.loads(Path(export_file(ctx, session, "en", "json")["value"]).read_text("utf-8"))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    listing = list_update(ctx, session, "マグロ")  # search finds message text
    assert listing["choices"] == [(conv.title, conv.id)] and listing["value"] == conv.id
    assert list_update(ctx, ChatSession(), "none such")["choices"] == []
