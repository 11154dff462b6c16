"""One FastAPI app for everything a browser or a client talks to: the OpenAI-compatible
API (app/api/openai.py) under /v1, a /health probe, the bundled assets, and the Gradio UI at /.

Routes registered before Gradio is mounted at "/" take precedence, so the API and
assets are added first. uvicorn serves it on a socket bound before start-up (port 0
lets the OS pick a free port, with no window for another process to take it).
"""

from __future__ import annotations

import os
import socket
import threading
import time

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.api.anthropic import anthropic_router
from app.api.ollama import ollama_router
from app.api.openai import create_router
from app.context import AppContext
from app.ui.header import PAGE_JS
from app.ui.page import ASSETS, build_ui, css, theme

# Gradio would otherwise report usage to its servers; Itamae talks to nobody.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def create_app(ctx: AppContext, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="Itamae", version=__version__, docs_url=None, redoc_url=None)
    app.include_router(create_router(ctx.manager, api_key=api_key))
    app.include_router(ollama_router(ctx.manager, api_key=api_key))
    app.include_router(anthropic_router(ctx.manager, api_key=api_key))

    @app.get("/health")
    async def health():
        return ctx.manager.health()

    app.mount("/itamae-assets", StaticFiles(directory=ASSETS, check_dir=True), name="assets")
    blocks = build_ui(ctx)
    # Off loopback the UI is as exposed as the API, so it asks for the same key.
    auth = ("itamae", api_key) if api_key else None
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        theme=theme(),
        css=css(),
        js=PAGE_JS,
        favicon_path=str(ASSETS / "icon.png"),
        allowed_paths=[str(ASSETS)],
        footer_links=[],
        auth=auth,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class Server:
    """uvicorn in a background thread, stoppable, with a readiness wait."""

    def __init__(self, app: FastAPI, sock: socket.socket):
        self.sock = sock
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="itamae-http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)
