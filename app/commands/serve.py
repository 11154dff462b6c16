"""`itamae serve`: the OpenAI-compatible API alone, headless.

A FastAPI app with only the API router (app/api/openai.py) on uvicorn. It listens on
127.0.0.1 unless told otherwise; any other address reaches other machines, so it
needs --api-key. Browsers on other origins are refused (no CORS headers) unless
--cors-origin names them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import threading

from converters.core.errors import ItamaeError
from engine.loader import ENGINES

DEFAULT_PORT = 8000  # the port vLLM and many OpenAI-compatible servers default to


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="the OpenAI-compatible API alone, headless",
        description="Serve one model over the OpenAI API (/v1/chat/completions, "
        "/v1/completions, /v1/models).",
    )
    p.add_argument("--model", default="demo", help="a folder, a .gguf, a URL, or 'demo'")
    p.add_argument("--engine", default="auto", choices=("auto", *ENGINES))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    # Keys may come from the environment too: a command line is visible to every user
    # of the machine (ps), the environment only to the owner.
    p.add_argument(
        "--api-key",
        default=os.environ.get("ITAMAE_API_KEY"),
        help="bearer token clients must send; required off loopback (or ITAMAE_API_KEY)",
    )
    p.add_argument(
        "--remote-api-key",
        default=os.environ.get("ITAMAE_REMOTE_API_KEY"),
        help="key for the server a URL --model points at (or ITAMAE_REMOTE_API_KEY)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN (e.g. http://localhost:3000); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the address as one JSON line")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise ItamaeError(
            f"Listening on {host} lets other machines use this model, so it needs a key.",
            "Add --api-key SECRET (clients send 'Authorization: Bearer SECRET'), "
            "or keep the default --host 127.0.0.1.",
        )


def build_app(manager, api_key: str | None = None, cors_origins: list[str] | None = None):
    from fastapi import FastAPI

    from app import __version__
    from app.api.anthropic import anthropic_router
    from app.api.ollama import ollama_router
    from app.api.openai import create_router

    app = FastAPI(title="Itamae API", version=__version__, docs_url=None, redoc_url=None)
    app.include_router(create_router(manager, api_key=api_key))
    app.include_router(ollama_router(manager, api_key=api_key))
    app.include_router(anthropic_router(manager, api_key=api_key))

    @app.get("/health")
    async def health():
        # Model state, plus how many requests wait for it (for monitoring and tests).
        return manager.health()

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ItamaeError(
            f"Cannot listen on {host}:{port} ({e.strerror}).",
            "Pick another --port (0 chooses a free one) or stop what is using it.",
        ) from e
    sock.set_inheritable(True)
    return sock


def run(args) -> int:
    import uvicorn

    from app.model_manager import ModelManager

    check_exposure(args.host, args.api_key)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{port}/v1"

    manager = ModelManager()
    options = {"api_key": args.remote_api_key} if args.remote_api_key else {}
    manager.load(args.model, args.engine, **options)
    app = build_app(manager, args.api_key, args.cors_origin)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    failed = threading.Event()

    def report_load() -> None:
        status = manager.wait()
        if status.state == "error":
            # A headless server cannot load another model, so a failed load ends it.
            print(f"itamae: {status.message}", file=sys.stderr)
            failed.set()
            server.should_exit = True
        else:
            print(f"itamae: model ready: {status.message}", file=sys.stderr, flush=True)

    threading.Thread(target=report_load, name="itamae-serve-load", daemon=True).start()
    if args.json:
        print(json.dumps({"url": url, "host": args.host, "port": port, "model": args.model}))
    else:
        print(f"itamae: serving the OpenAI API at {url} (model {args.model})")
    if not is_loopback(args.host):
        print(f"itamae: listening on {args.host}: reachable from other machines", file=sys.stderr)
    sys.stdout.flush()
    try:
        server.run(sockets=[sock])
    finally:
        manager.unload()
    return 2 if failed.is_set() else 0
