"""The real app in a real browser: Debian's Chromium driven by Playwright.

The app runs as `itamae --no-browser` in its own process on a real model through the
torch engine: the tiny qwen3_moe fixture (random weights, so replies are gibberish,
but it streams steadily and never runs out of things to say, which a stop test needs).
Screenshots go to test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from app.model_settings import ModelSettings, model_key
from app.store import ConversationStore
from tests.test_launcher import start_app, stop

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
READY_TIMEOUT_MS = 300_000  # generous: a shared CI machine can be very busy
REPLY_TIMEOUT_MS = 120_000

BOT_ROWS = "#chatbot .message-row.bot-row"
USER_ROWS = "#chatbot .message-row.user-row"
STATS = "#chatbot .reply-stats"

if not Path(CHROMIUM).exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def seed_settings(home: Path, max_tokens: int, model: Path | str) -> None:
    # Greedy decoding, so every run of the test sees the same replies; saved for the
    # model too, since its own generation_config.json would apply before the app's.
    home.mkdir(parents=True, exist_ok=True)
    sampling = {"temperature": 0.0, "max_tokens": max_tokens, "repeat_penalty": 1.0}
    (home / "settings.json").write_text(json.dumps({"sampling": sampling}))
    ModelSettings(home / "model_settings.json").save(model_key(model), **sampling)


def set_max_tokens(page, n: int) -> None:
    """Type a reply limit into the Sampling panel's slider and wait until the slider holds it:
    a message sent before the typed value is committed would still use the old limit."""
    page.get_by_text("Sampling", exact=True).click()
    limit = page.locator("#max-tokens input[type=number]")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    held = "n => document.querySelector('#max-tokens input[type=range]').value === String(n)"
    for attempt in range(3):  # a busy page can drop the first commit; type it again
        limit.fill(str(n))
        limit.press("Enter")
        try:
            page.wait_for_function(held, arg=n, timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


@pytest.fixture(scope="module")
def model(hf_checkpoint) -> Path:
    return hf_checkpoint("qwen3_moe")


@pytest.fixture
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(browser, locale: str, outside: list[str]):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale=locale)
    page = context.new_page()
    # Itamae works offline: record anything the page tries to fetch from elsewhere.
    page.on(
        "request",
        lambda r: (
            outside.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else None
        ),
    )
    return page


def open_app(page, url: str) -> None:
    page.goto(url)
    settled = '#model-status [data-state="ready"], #model-status [data-state="error"]'
    page.wait_for_selector(settled, timeout=READY_TIMEOUT_MS)
    status = page.locator("#model-status .model-status")
    assert status.get_attribute("data-state") == "ready", status.inner_text()


def send(page, text: str) -> list[str]:
    """Send a message and watch its reply arrive; returns the reply's texts as the page
    showed them while it streamed (sampled in the page every 5 ms)."""
    replies_before = page.locator(STATS).count()
    page.evaluate(
        """n => { window.__seen = []; clearInterval(window.__watch);
            window.__watch = setInterval(() => {
                const rows = document.querySelectorAll('#chatbot .message-row.bot-row');
                if (rows.length <= n) return;
                const text = rows[n].innerText.trim();
                if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
            }, 5); }""",
        page.locator(BOT_ROWS).count(),
    )
    page.fill("#message textarea", text)
    page.press("#message textarea", "Enter")
    page.wait_for_function(
        f"() => document.querySelectorAll('#chatbot .reply-stats').length > {replies_before}",
        timeout=REPLY_TIMEOUT_MS,
    )
    return page.evaluate("() => { clearInterval(window.__watch); return window.__seen; }")


def reply_text(page) -> str:
    """The first reply's text without its stats line (timings differ between runs)."""
    row = page.locator(BOT_ROWS).first
    return row.inner_text().replace(row.locator(".reply-stats").inner_text(), "").strip()


def shot(page, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_chat_in_english_and_japanese_stop_reload_and_switch_language(tmp_path, model, browser):
    home = tmp_path / "home"
    # Long enough that even a fast CPU takes a second, so the page shows the reply grow.
    seed_settings(home, max_tokens=400, model=model)
    proc, url, _ = start_app(home, "--model", str(model))
    outside: list[str] = []
    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        assert page.get_by_role("tab", name="Chat").is_visible()
        shot(page, "01-ready")

        # English: the reply streams in (the page shows it growing), then its stats
        seen = send(page, "Hello, who are you?")
        assert len(seen) >= 3, seen
        assert all(len(a) <= len(b) for a, b in zip(seen, seen[1:], strict=False))
        assert page.locator(USER_ROWS).last.inner_text().strip() == "Hello, who are you?"
        assert re.search(
            r"\d+ tokens · first token [\d.]+ s · [\d.]+ tokens/s",
            page.locator(STATS).last.inner_text(),
        )
        page.wait_for_selector("#expert-heatmap rect", timeout=10_000)  # the reply's expert usage
        shot(page, "02-english-reply")

        # Japanese
        seen = send(page, "こんにちは、元気ですか？")
        assert len(seen) >= 3, seen
        assert page.locator(USER_ROWS).last.inner_text().strip() == "こんにちは、元気ですか？"
        shot(page, "03-japanese-reply")

        # Stop midway: a long reply in a new conversation, stopped once text is on screen
        page.click("#new-chat")
        page.wait_for_function("() => !document.querySelector('#chatbot .message-row')")
        set_max_tokens(page, 4000)
        replies_before = page.locator(STATS).count()
        page.fill("#message textarea", "Tell me a very long story.")
        page.press("#message textarea", "Enter")
        page.wait_for_selector("#stop", state="visible", timeout=REPLY_TIMEOUT_MS)
        page.wait_for_function(
            "n => document.querySelectorAll('#chatbot .message-row.bot-row').length > n "
            "&& document.querySelectorAll('#chatbot .message-row.bot-row')[n].innerText.trim().length > 20",
            arg=0,
            timeout=REPLY_TIMEOUT_MS,
        )
        shot(page, "04-streaming")
        page.click("#stop")
        page.wait_for_function(
            f"() => document.querySelectorAll('#chatbot .reply-stats').length > {replies_before}",
            timeout=30_000,
        )
        stats = page.locator(STATS).last.inner_text()
        assert "stopped" in stats, stats
        stopped_tokens = int(stats.split()[0])
        assert 0 < stopped_tokens < 4000
        page.wait_for_selector("#send", state="visible")
        shot(page, "05-stopped")

        # Reload: both conversations are in the sidebar, whole
        page.reload()
        page.wait_for_selector("#conversation-list label", timeout=30_000)
        assert page.locator("#conversation-list label").count() == 2
        page.locator("#conversation-list label", has_text="Tell me a very long story.").click()
        page.wait_for_selector(STATS)
        assert "stopped" in page.locator(STATS).last.inner_text()
        page.locator("#conversation-list label", has_text="Hello, who are you?").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#chatbot .message-row.user-row').length === 2"
        )
        users = [u.inner_text().strip() for u in page.locator(USER_ROWS).all()]
        assert users == ["Hello, who are you?", "こんにちは、元気ですか？"]
        shot(page, "06-reloaded")

        # Switch the UI to Japanese: every label, and the text made at run time
        page.locator("#language label", has_text="日本語").click()
        page.wait_for_selector("#send:has-text('送信')")
        assert page.get_by_role("tab", name="チャット").is_visible()
        assert page.get_by_role("tab", name="モデル").is_visible()
        assert "新しいチャット" in page.inner_text("#new-chat")
        page.wait_for_function(
            "() => document.querySelector('#chatbot .reply-stats')?.innerText.includes('トークン')"
        )
        shot(page, "07-japanese-ui")
        page.get_by_role("tab", name="モデル").click()
        page.wait_for_selector("#library table")
        shot(page, "08-models-ja")

        # The choice is remembered by this browser
        page.reload()
        page.wait_for_selector("#send:has-text('送信')", timeout=30_000)
        assert outside == [], outside
    finally:
        assert stop(proc) == 0


def test_two_tabs_keep_their_own_conversations(tmp_path, model, browser):
    home = tmp_path / "home"
    seed_settings(home, max_tokens=24, model=model)
    proc, url, _ = start_app(home, "--model", str(model))
    outside: list[str] = []
    try:
        # A Japanese browser gets the Japanese UI without touching the switch.
        tab_a = new_page(browser, "ja-JP", outside)
        tab_b = new_page(browser, "ja-JP", outside)
        for tab in (tab_a, tab_b):
            open_app(tab, url)
            tab.wait_for_selector("#send:has-text('送信')")
        # Both tabs send at once; the model serves them one after the other.
        for tab, text in ((tab_a, "tab A speaks"), (tab_b, "タブBです")):
            tab.fill("#message textarea", text)
        tab_a.press("#message textarea", "Enter")
        tab_b.press("#message textarea", "Enter")
        for tab in (tab_a, tab_b):
            tab.wait_for_selector(STATS, timeout=REPLY_TIMEOUT_MS)
        assert [t.inner_text().strip() for t in tab_a.locator(USER_ROWS).all()] == ["tab A speaks"]
        assert [t.inner_text().strip() for t in tab_b.locator(USER_ROWS).all()] == ["タブBです"]
        shot(tab_b, "09-second-tab-ja")
    finally:
        assert stop(proc) == 0
    db = sqlite3.connect(home / "conversations.sqlite3")
    rows = db.execute(
        "SELECT c.title, m.role, m.content, m.finish_reason FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id ORDER BY c.title, m.position"
    ).fetchall()
    by_title: dict[str, list] = {}
    for title, role, content, finish in rows:
        by_title.setdefault(title, []).append((role, content, finish))
    assert set(by_title) == {"tab A speaks", "タブBです"}
    for title, messages in by_title.items():
        assert [m[0] for m in messages] == ["user", "assistant"]
        assert messages[0][1] == title
        assert messages[1][2] in ("stop", "length")
    assert outside == []


def test_kill_9_while_a_reply_streams_keeps_the_conversation(tmp_path, model, browser):
    home = tmp_path / "home"
    seed_settings(home, max_tokens=24, model=model)
    proc, url, _ = start_app(home, "--model", str(model))
    outside: list[str] = []
    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        send(page, "first question")
        send(page, "second question")
        set_max_tokens(page, 4000)
        page.fill("#message textarea", "third question, long answer")
        page.press("#message textarea", "Enter")
        page.wait_for_function(
            "() => { const rows = document.querySelectorAll('#chatbot .message-row.bot-row');"
            " return rows.length > 2 && rows[2].innerText.trim().length > 40; }",
            timeout=REPLY_TIMEOUT_MS,
        )
        time.sleep(1.0)  # past at least one periodic save of the growing reply
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    proc, url, _ = start_app(home, "--model", str(model))
    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        page.locator("#conversation-list label", has_text="first question").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#chatbot .message-row.user-row').length === 3"
        )
        users = [u.inner_text().strip() for u in page.locator(USER_ROWS).all()]
        assert users == ["first question", "second question", "third question, long answer"]
        stats = [s.inner_text() for s in page.locator(STATS).all()]
        assert len(stats) == 3 and "tokens" in stats[0] and "tokens" in stats[1]
        assert "Interrupted" in stats[2]
        bot_rows = page.locator(BOT_ROWS)
        assert len(bot_rows.nth(2).inner_text().strip()) > 20  # the part saved before the kill
        shot(page, "10-after-kill-9")
    finally:
        assert stop(proc) == 0
    assert outside == []


def test_regenerate_and_the_experts_per_token_knob(tmp_path, model, browser):
    home = tmp_path / "home"
    seed_settings(home, max_tokens=24, model=model)
    proc, url, _ = start_app(home, "--model", str(model))
    outside: list[str] = []
    db = home / "conversations.sqlite3"

    def last_reply_expert_tokens() -> list[int]:
        # WAL lets this read while the app writes.
        (stats,) = (
            sqlite3.connect(db)
            .execute("SELECT stats FROM messages WHERE role = 'assistant' ORDER BY id DESC LIMIT 1")
            .fetchone()
        )
        return [sum(layer) for layer in json.loads(stats)["expert_counts"]]

    def last_reply() -> tuple[int, str | None]:
        return (
            sqlite3.connect(db)
            .execute(
                "SELECT id, finish_reason FROM messages WHERE role = 'assistant' ORDER BY id DESC"
            )
            .fetchone()
        )

    def regenerate() -> None:
        # A short greedy reply can come and go faster than the Stop button can be seen,
        # so wait for the new reply in the store, then for the page to show it.
        before, _ = last_reply()
        page.click("#regenerate")
        deadline = time.monotonic() + REPLY_TIMEOUT_MS / 1000
        while (reply := last_reply())[0] in (before, None) or reply[1] is None:
            assert time.monotonic() < deadline, "no new reply"
            time.sleep(0.1)
        page.wait_for_selector("#send", state="visible", timeout=REPLY_TIMEOUT_MS)
        page.wait_for_selector(STATS)

    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        send(page, "Say something.")
        first = reply_text(page)
        default_usage = last_reply_expert_tokens()
        regenerate()
        assert page.locator(USER_ROWS).count() == 1 and page.locator(STATS).count() == 1
        assert reply_text(page) == first  # greedy decoding: the same reply again
        # One expert per token instead of the model's two: fewer expert runs per layer.
        knob = page.locator("#experts-per-token input[type=number]")
        knob.fill("1")
        knob.press("Enter")
        regenerate()
        one_expert_usage = last_reply_expert_tokens()
        assert len(one_expert_usage) == len(default_usage)
        assert all(a < b for a, b in zip(one_expert_usage, default_usage, strict=True))
        shot(page, "12-one-expert-per-token")
    finally:
        assert stop(proc) == 0
    store = ConversationStore(db)
    (conv,) = store.conversations()
    shown = store.messages(conv.id)
    assert [(m.role, m.finish_reason) for m in shown] == [("user", "stop"), ("assistant", "length")]
    assert len(shown[1].alternatives) == 3  # each regenerate added a reply, none was lost
    assert outside == []


def test_edit_a_sent_message_and_resend(tmp_path, model, browser):
    home = tmp_path / "home"
    seed_settings(home, max_tokens=24, model=model)
    proc, url, _ = start_app(home, "--model", str(model))
    outside: list[str] = []
    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        send(page, "A first try.")
        send(page, "A follow-up.")
        # Edit the first message: the conversation forks there and shows the new branch.
        page.locator('#chatbot button[aria-label="Edit"]').first.click()
        page.fill("#chatbot textarea", "A better first question.")
        page.click('#chatbot button[aria-label="Submit"]')
        page.wait_for_function(
            "() => document.querySelectorAll('#chatbot .message-row.user-row').length === 1"
            " && document.querySelectorAll('#chatbot .reply-stats').length === 1",
            timeout=REPLY_TIMEOUT_MS,
        )
        page.wait_for_selector("#send", state="visible", timeout=REPLY_TIMEOUT_MS)
        assert page.locator(USER_ROWS).first.inner_text().strip() == "A better first question."
        shot(page, "11-edited")
    finally:
        assert stop(proc) == 0
    store = ConversationStore(home / "conversations.sqlite3")
    (conv,) = store.conversations()
    messages = store.messages(conv.id)  # the path shown: the edit and its new reply
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[0].content == "A better first question."
    store.switch(messages[0].alternatives[0])  # the original branch is still there, whole
    assert [m.content for m in store.messages(conv.id)][::2] == ["A first try.", "A follow-up."]
    assert outside == []


def test_convert_tab_result_appears_in_the_models_tab(tmp_path, model, browser):
    home = tmp_path / "home"
    seed_settings(home, max_tokens=24, model=model)
    proc, url, _ = start_app(home, "--model", str(model))
    outside: list[str] = []
    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        page.get_by_role("tab", name="Convert").click()
        source = page.locator("#convert-source input")
        source.fill(str(model))
        source.press("Enter")
        page.locator("#recipe label", has_text="Q8_0").click()
        page.locator("#convert-quality input").check()  # and measure what it cost
        page.click("#convert-start")
        page.wait_for_selector("#convert-progress .notice.ok", timeout=REPLY_TIMEOUT_MS)
        output = home / "models" / "qwen3_moe-Q8_0.gguf"
        notice = page.inner_text("#convert-progress")
        assert str(output) in notice and "mean KL" in notice and "Models tab" in notice, notice
        assert output.stat().st_size > 0
        assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no temp left
        report = json.loads((home / "models" / "qwen3_moe-Q8_0.quality.json").read_text())
        assert f"{report['kl_mean']:.5f}" in notice and report["reference"] == str(model)
        shot(page, "13-converted")
        page.get_by_role("tab", name="Models").click()
        # textContent: Gradio's table keeps its rows in a virtual list innerText skips
        find_row = """() => [...document.querySelectorAll('#library tr')]
            .map(r => r.textContent).find(t => t.includes('qwen3_moe-Q8_0.gguf'))"""
        page.wait_for_function(find_row)
        row = page.evaluate(find_row)
        assert "Itamae" in row and "qwen3_moe" in row and "Q8_0" in row.upper(), row
        # Select it: what it is, the llama.cpp memory plan; then load it and chat with it.
        page.locator("#library").get_by_text("qwen3_moe-Q8_0.gguf", exact=True).click()
        page.wait_for_function(
            "() => document.querySelector('#model-details').innerText.includes('gguf')"
        )
        page.wait_for_selector("#plan code, #plan pre")
        # the report measured in the Convert tab, under the model's details
        details = page.inner_text("#model-details")
        assert "What quantization cost" in details and "Compared with qwen3_moe" in details
        assert f"{report['kl_mean']:.5f}" in details and "No quality report" not in details
        shot(page, "14-models-with-conversion")
        page.click("#load")
        page.wait_for_selector("#tab-chat:visible, #message textarea:visible")
        # the header names the engine that runs it: llama.cpp for a GGUF
        page.wait_for_function(
            "() => { const s = document.querySelector('#model-status .model-status');"
            " return s && s.dataset.state === 'ready' && s.innerText.includes('llamacpp'); }",
            timeout=READY_TIMEOUT_MS,
        )
        send(page, "Hello from llama.cpp")
        assert page.locator(STATS).count() == 1
        shot(page, "15-chat-on-converted-gguf")
    finally:
        assert stop(proc) == 0
    assert outside == []


def test_first_launch_chats_with_the_bundled_demo(tmp_path, browser):
    """Plain `itamae` on a fresh machine: the demo loads by itself, the page says what it
    is and where real models come from, and it answers in both languages."""
    from app.launcher import startup_model

    if startup_model(None, "") != "demo":
        pytest.skip("the bundled demo model is not in this checkout yet")
    home = tmp_path / "home"
    seed_settings(home, max_tokens=48, model="demo")
    proc, url, _ = start_app(home)  # no --model, nothing configured
    outside: list[str] = []
    try:
        page = new_page(browser, "en-US", outside)
        open_app(page, url)
        assert "bundled demo" in page.inner_text("#model-status")
        send(page, "How are you?")
        assert "well" in page.locator(BOT_ROWS).last.inner_text().lower()
        send(page, "お元気ですか？")
        assert "元気" in page.locator(BOT_ROWS).last.inner_text()
        shot(page, "15-first-launch-demo")
    finally:
        assert stop(proc) == 0
    assert outside == []
