"""Limits that keep one client from taking the server down: a bounded wait queue (429)
and a bounded request body (413). The router runs in this process on uvicorn, over a
ModelManager holding the tiny qwen3_moe fixture on the torch engine."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.api.openai import MAX_BODY_BYTES, create_router
from app.model_manager import ModelManager
from engine.types import GenerationRequest, Message, SamplingParams


@pytest.fixture(scope="module")
def api(hf_checkpoint):
    manager = ModelManager()
    manager.load(hf_checkpoint("qwen3_moe"), engine="torch", wait=True)
    app = FastAPI()
    app.include_router(create_router(manager, max_queue=1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    model = httpx.get(url + "/models").json()["data"][0]["id"]
    yield url, model, manager
    server.should_exit = True
    thread.join(timeout=10)
    manager.unload()


def test_a_full_queue_answers_429_and_the_queued_request_still_runs(api):
    url, model, manager = api
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    hold = manager.stream(
        GenerationRequest(
            messages=[Message("user", "hold")], sampling=SamplingParams(max_tokens=500)
        )
    )
    next(hold)  # the model is busy: the next request must wait
    queued = {}
    waiter = threading.Thread(
        target=lambda: queued.update(
            r=httpx.post(url + "/chat/completions", json=body, timeout=120)
        )
    )
    waiter.start()
    while manager.queue_length < 1:
        time.sleep(0.01)
    refused = httpx.post(url + "/chat/completions", json=body, timeout=30)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    hold.close()
    waiter.join(timeout=120)
    assert queued["r"].status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read(api):
    url, model, _ = api
    big = b'{"model": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
    declared = httpx.post(
        url + "/chat/completions",
        content=big,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold while reading
        for at in range(0, len(big), 2**20):
            yield big[at : at + 2**20]

    chunked = httpx.post(url + "/chat/completions", content=chunks(), timeout=60)
    assert chunked.status_code == 413
    assert httpx.get(url + "/models").status_code == 200
