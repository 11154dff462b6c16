"""A reasoning model's thoughts in the real app, in a real browser (Debian's Chromium).

The model is the gpt-oss fixture steered to think (tests/fixtures/harmony_steer.py),
converted to GGUF by `itamae convert` and run by llama.cpp: its reply opens Harmony's
analysis channel, which the chat must show as a reasoning block ("Thinking…" while it
streams; "Thought", collapsed, when the finished conversation is opened), never as answer
text with Harmony's tokens in it. (Since main's chat rework, a block the stream opened
stays open in that page after the reply ends: the UI's behaviour for every reasoning model.)
"""

from __future__ import annotations

import pytest

from converters.conversion.convert import convert
from tests import test_ui_e2e as e2e
from tests.fixtures.harmony_steer import STEERED_THOUGHT, steer_to_analysis
from tests.test_launcher import start_app, stop
from tests.test_ui_e2e import BOT_ROWS, new_page, open_app, seed_settings, send, shot

pytestmark = pytest.mark.browser
browser = e2e.browser  # the same headless Chromium fixture


@pytest.fixture(scope="module")
def thinking_model(hf_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("harmony")
    folder = steer_to_analysis(hf_checkpoint("gpt_oss"), root / "gpt-oss-thinks")
    gguf = root / "gpt-oss-thinks.gguf"
    convert(folder, gguf, "Q8_0")
    return gguf


def test_analysis_channel_shows_as_a_collapsed_reasoning_block(tmp_path, thinking_model, browser):
    home = tmp_path / "home"
    seed_settings(home, max_tokens=400, model=thinking_model)  # streams long enough to see
    proc, url, _ = start_app(home, "--model", str(thinking_model))
    outside: list[str] = []
    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        seen = send(page, "What is good today?")
        assert any(s.startswith("Thinking…") for s in seen), seen  # open while it streams
        # the finished reply, as the conversation shows it when opened again
        page.reload()
        page.wait_for_selector("#conversation-list label", timeout=30_000)
        page.locator("#conversation-list label", has_text="What is good today?").click()
        reply = page.locator(BOT_ROWS).first
        thought = reply.locator(".thought-group .title", has_text="Thought")
        thought.wait_for(timeout=30_000)
        shot(page, "harmony-01-collapsed")
        text = reply.inner_text()
        assert "<|channel|>" not in text and "<|message|>" not in text
        assert STEERED_THOUGHT.strip() not in text  # collapsed: the thoughts are hidden
        thought.click()
        page.wait_for_function(
            "t => document.querySelector('#chatbot .message-row.bot-row').innerText.includes(t)",
            arg=STEERED_THOUGHT.strip(),
            timeout=10_000,
        )
        shot(page, "harmony-02-expanded")
        assert "analysis" not in reply.inner_text().replace("Thought", "")
        assert outside == [], outside
    finally:
        assert stop(proc) == 0
