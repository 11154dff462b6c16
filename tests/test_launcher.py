"""Plain `itamae`: a free port on loopback, a server that answers before the model is
ready, a clear state when there is no model, a clean stop; and `itamae shortcut`."""

from __future__ import annotations

import configparser
import json
import os
import plistlib
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.commands import shortcut
from app.launcher import startup_model

REPO = Path(__file__).resolve().parents[1]
URL_LINE = re.compile(r"Itamae is running at (http://127\.0\.0\.1:\d+)\s+\(ready in ([\d.]+) s")


def start_app(
    home: Path, *args: str, env: dict | None = None
) -> tuple[subprocess.Popen, str, float]:
    env = {
        **os.environ,
        "ITAMAE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "PYTHONPATH": str(REPO),
        **(env or {}),
    }
    home.mkdir(parents=True, exist_ok=True)
    # stderr to a file: a pipe nobody reads would block the server once it fills up
    with open(home / "stderr.log", "a") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--no-browser", *args],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
            cwd=REPO,
        )
    line = proc.stdout.readline()
    match = URL_LINE.search(line)
    if not match:
        proc.kill()
        raise AssertionError(f"no address printed: {line!r} {(home / 'stderr.log').read_text()}")
    return proc, match.group(1), float(match.group(2))


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_no_model_yet_serves_ui_and_api_on_a_free_loopback_port(tmp_path, monkeypatch):
    # Two launches at once get two ports: each binds its own free one.
    first, url_a, ready_s = start_app(tmp_path / "a")
    second, url_b, _ = start_app(tmp_path / "b")
    try:
        assert url_a != url_b
        assert ready_s < 30
        status, page = get(url_a + "/")
        assert status == 200 and "<html" in page.lower()
        health = json.loads(get(url_a + "/health")[1])
        if startup_model(None, "") == "demo":  # the bundled demo starts loading at once
            assert health["state"] in ("loading", "ready"), health
        else:
            assert health["state"] == "empty", health
        assert get(url_a + "/v1/models")[0] == 200
        assert get(url_a + "/itamae-assets/icon.svg")[1].startswith("<svg")
        # the data folder is where ITAMAE_HOME says, with the conversation database in it
        assert (tmp_path / "a" / "conversations.sqlite3").exists()
    finally:
        assert stop(first) == 0
        assert stop(second) == 0


def test_model_loads_in_the_background(tmp_path, hf_checkpoint):
    model = hf_checkpoint("qwen3_moe")
    proc, url, _ = start_app(tmp_path, "--model", str(model))
    try:
        # the server answered before the model was ready; it becomes ready on its own
        deadline = time.monotonic() + 120
        while True:
            health = json.loads(get(url + "/health")[1])
            if health["state"] in ("ready", "error") or time.monotonic() > deadline:
                break
            assert health["state"] == "loading"
            time.sleep(0.2)
        assert health["state"] == "ready", health
        models = json.loads(get(url + "/v1/models")[1])
        assert models["data"], models
    finally:
        assert stop(proc) == 0


def test_refuses_other_machines_without_a_key(tmp_path):
    env = {**os.environ, "ITAMAE_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "--no-browser", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--api-key" in done.stderr


def test_startup_model_order():
    assert startup_model("/m/x.gguf", "/configured") == "/m/x.gguf"
    assert startup_model(None, "/configured") == "/configured"
    demo = (shortcut.ASSETS / "demo" / "hf").is_dir() or any(
        (shortcut.ASSETS / "demo").glob("*.gguf")
    )
    assert startup_model(None, "") == ("demo" if demo else None)


def test_linux_shortcut_is_a_valid_desktop_entry(tmp_path):
    (path,) = shortcut.create("linux", tmp_path)
    assert path.name == "itamae.desktop" and os.access(path, os.X_OK)
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # keys are case-sensitive in the spec
    entry.read(path, encoding="utf-8")
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application" and section["Name"] == "Itamae"
    assert Path(section["Icon"]).is_file() and section["Icon"].endswith("icon.png")
    assert section["Exec"].split()[:3] == [sys.executable, "-m", "app.cli"]
    # the launcher really starts Itamae: its command answers --version
    out = subprocess.run(
        [*section["Exec"].split(), "--version"], capture_output=True, text=True, cwd=section["Path"]
    )
    assert out.stdout.startswith("itamae ")


def test_macos_shortcut_is_an_app_bundle(tmp_path):
    (app,) = shortcut.create("darwin", tmp_path)
    with open(app / "Contents" / "Info.plist", "rb") as f:
        info = plistlib.load(f)
    executable = app / "Contents" / "MacOS" / info["CFBundleExecutable"]
    assert os.access(executable, os.X_OK)
    assert (app / "Contents" / "Resources" / info["CFBundleIconFile"]).is_file()
    assert "-m app.cli" in executable.read_text()


def test_windows_shortcut_without_powershell_points_at_a_launcher(tmp_path, monkeypatch):
    monkeypatch.setattr(shortcut.shutil, "which", lambda name: None)
    url, launcher = shortcut.create("win32", tmp_path)
    text = url.read_text(encoding="utf-8")
    assert text.startswith("[InternetShortcut]") and "icon.ico" in text
    assert "app.cli" in launcher.read_text(encoding="utf-8")


def test_unknown_platform_is_a_clear_error(tmp_path):
    from converters.core.errors import ItamaeError

    with pytest.raises(ItamaeError, match="launcher"):
        shortcut.create("plan9", tmp_path)
