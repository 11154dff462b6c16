"""Plain `itamae`: start the app and open it in the browser.

Start-up is fast because nothing waits for the model: the server answers first, the
browser opens, and the model loads in a background thread while the page shows its
progress. Which model: `--model`, else the one set in Settings, else the bundled demo
when it is installed; with none, the page says how to get one.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import urllib.request
import webbrowser

from app.commands.serve import check_exposure, is_loopback
from app.context import AppContext
from app.model_manager import ModelManager
from app.settings import AppPaths
from engine.loader import DEMO_DIR

ANSWER_TIMEOUT_S = 60.0


def startup_model(cli_model: str | None, configured: str) -> str | None:
    if cli_model:
        return cli_model
    if configured:
        return configured
    if (DEMO_DIR / "hf").is_dir() or any(DEMO_DIR.glob("*.gguf")):
        return "demo"
    return None


def wait_until_answering(url: str, timeout: float = ANSWER_TIMEOUT_S) -> dict:
    """Poll /health until the server answers; returns its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run(args) -> int:
    from app.server import Server, bind, create_app

    host = getattr(args, "host", "127.0.0.1") or "127.0.0.1"
    api_key = getattr(args, "api_key", None)
    check_exposure(host, api_key)
    started = time.monotonic()
    ctx = AppContext.create(ModelManager(), AppPaths.default())
    settings = ctx.settings.load()
    sock = bind(host, getattr(args, "port", 0) or 0)
    server = Server(create_app(ctx, api_key=api_key), sock)
    ctx.api_base = f"{server.url}/v1"
    server.start()
    wait_until_answering(server.url)
    ready_s = time.monotonic() - started
    model = startup_model(getattr(args, "model", None), settings.startup_model)
    if model:
        ctx.manager.load(model, settings.startup_engine if not args.model else "auto")
    url = server.url
    if not is_loopback(host):  # 0.0.0.0 and friends: this machine's browser uses loopback
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    print(f"Itamae is running at {url}  (ready in {ready_s:.1f} s; Ctrl-C to quit)", flush=True)
    if model:
        print(f"Loading model: {model}", flush=True)
    else:
        print("No model yet: open the Models tab to download, add or convert one.", flush=True)
    if not getattr(args, "no_browser", False):
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    print("Stopping Itamae…", file=sys.stderr, flush=True)
    server.stop()
    ctx.manager.unload()
    return 0
