"""The Models tab in a real browser on a planted machine: LM Studio's, Ollama's and the HF
cache's models listed under their names and loaded by name, a hub search against a hub on
127.0.0.1, one quant downloaded with progress; and how long the card of a GGUF with a
151,936-token vocabulary takes to show (printed, not asserted)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.fixtures.llamacpp_reference import llama_cpp_source
from tests.hub_server import HubServer
from tests.planted_machine import plant_machine, snapshot
from tests.test_launcher import start_app, stop
from tests.test_library_downloads import GGUF_REPO, build_repos
from tests.test_ui_e2e import CHROMIUM, CHROMIUM_ARGS, READY_TIMEOUT_MS, new_page, open_app, shot

pytestmark = pytest.mark.browser
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

# Gradio's table draws its rows as a virtual list (div.virtual-row, only those in view;
# its one <tbody> row only sizes the columns): scroll through it and collect each row.
ROWS = """async () => {
    const table = document.querySelector('#library');
    const box = table.querySelector('.virtual-table-viewport') || table;
    const seen = new Set();
    for (let y = 0; y <= box.scrollHeight; y += 60) {
        box.scrollTop = y;
        await new Promise(r => setTimeout(r, 60));
        table.querySelectorAll('.virtual-row').forEach(r => seen.add(r.textContent));
    }
    box.scrollTop = 0;
    return [...seen];
}"""


def row_with(page, *texts: str, timeout_s: float = 60) -> str:
    """The library row holding all of `texts`."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = page.evaluate(ROWS)
        found = [r for r in rows if all(t in r for t in texts)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            shot(page, "29-library-row-missing")
            raise AssertionError(f"no row with {texts}: {rows}")
        time.sleep(0.5)


@pytest.fixture
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_models_tab_on_a_planted_machine(tmp_path, browser):
    planted = plant_machine(tmp_path / "home")
    vocab = llama_cpp_source() / "models" / "ggml-vocab-qwen2.gguf"  # 151,936 tokens
    settings = json.loads((planted.data_dir / "settings.json").read_text())
    settings["added_paths"].append(str(vocab))
    (planted.data_dir / "settings.json").write_text(json.dumps(settings))
    others = [planted.home / ".lmstudio", planted.home / ".ollama", planted.home / "big-disk"]
    before = [snapshot(folder) for folder in others]
    with HubServer(build_repos(tmp_path / "quants"), throttle_s=0.02) as hub:
        env = {**planted.env, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        proc, url, _ = start_app(planted.data_dir, "--model", "demo", env=env)
        outside: list[str] = []
        try:
            page = new_page(browser, "en-US", outside)
            open_app(page, url)
            page.get_by_role("tab", name="Models").click()
            for name, where in (
                ("itamae-demo:q8_0", "Ollama"),
                ("someone/tiny:latest", "Ollama"),
                ("someone/Demo-Split-GGUF/demo-split-00001-of-00002.gguf", "LM Studio"),
                ("lmstudio-community/Itamae-Demo-GGUF/itamae-demo-Q8_0.gguf", "LM Studio"),
                ("itamae/demo-GGUF/itamae-demo-Q8_0.gguf", "HF cache"),
                ("my-demo-copy", "Itamae"),
            ):
                row_with(page, name, where)
            row_with(page, "mmproj-demo-F16.gguf", "projector")
            shot(page, "20-models-planted-machine")

            # the card of a GGUF with a 151,936-token vocabulary
            page.locator("#library .virtual-row").get_by_text(
                "ggml-vocab-qwen2.gguf", exact=True
            ).click()
            started = time.perf_counter()
            page.wait_for_function(
                "() => document.querySelector('#model-details').innerText.includes('qwen2')"
            )
            card_s = time.perf_counter() - started
            print(f"\n151,936-token GGUF card shown {card_s:.2f} s after the click")

            # loaded by its library name: the API serves it under that name
            page.locator("#library .virtual-row").get_by_text(
                "itamae-demo:q8_0", exact=True
            ).click()
            page.wait_for_function(
                "() => document.querySelector('#model-details').innerText.includes('qwen3_moe')"
            )
            page.click("#load")
            page.wait_for_function(
                "() => { const s = document.querySelector('#model-status .model-status');"
                " return s && s.dataset.state === 'ready' && s.innerText.includes('llamacpp'); }",
                timeout=READY_TIMEOUT_MS,
            )
            models = httpx.get(url.rstrip("/") + "/v1/models", timeout=30).json()
            assert [m["id"] for m in models["data"]] == ["itamae-demo:q8_0"]

            # the hub, searched on request; one quant downloaded with progress
            page.get_by_role("tab", name="Models").click()
            assert not [r for r in hub.requests if r.startswith("GET /api/models?")]
            page.get_by_text("Search the Hugging Face hub").click()
            page.fill("#hub-query input, #hub-query textarea", "demo")
            page.click("#hub-search")
            page.wait_for_function(
                "r => document.querySelector('#hub-results').textContent.includes(r)", arg=GGUF_REPO
            )
            page.locator("#hub-results .virtual-row").get_by_text(GGUF_REPO, exact=True).click()
            spec = f"{GGUF_REPO}:Q4_0"  # the smallest quant comes first
            page.wait_for_function(
                "s => document.querySelector('#repo-id textarea, #repo-id input').value === s",
                arg=spec,
                timeout=120_000,
            )
            quants = page.locator("#hub-quants input").input_value()  # the quant picked
            assert "Q4_0" in quants and "fits" in quants, quants
            shot(page, "21-hub-search")
            page.locator("#download-status").scroll_into_view_if_needed()
            page.get_by_role("button", name="Download", exact=True).click()
            page.wait_for_function(
                "() => document.querySelector('#download-status').innerText.includes('/s')",
                timeout=120_000,
            )
            shown = page.inner_text("#download-status")
            assert "Downloading" in shown and "left" in shown, shown
            shot(page, "22-downloading")
            page.wait_for_selector("#download-status .notice.ok", timeout=300_000)
            row_with(page, f"{GGUF_REPO}/Demo-Q4_0.gguf", "HF cache", "Q4_0")
        finally:
            assert stop(proc) == 0
    assert {s.path for s in hub.sent if s.range.endswith("-") or not s.range} == {
        "Demo-Q4_0.gguf",
        "README.md",
    }
    assert [snapshot(folder) for folder in others] == before
    assert outside == []
