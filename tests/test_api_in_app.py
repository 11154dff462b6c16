"""The API router inside the full app (app/server.py: Gradio mounted at "/"), where it
shares the ModelManager with the chat UI. Gradio adds its own routes and middleware;
the API must still stream, notice a client that goes away, and ask for the key.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from app.context import AppContext
from app.model_manager import ModelManager
from app.settings import AppPaths
from engine.types import GenerationRequest, Message, SamplingParams, TokenEvent

KEY = "in-app-key"


@pytest.fixture(scope="module")
def app_server(hf_checkpoint, tmp_path_factory):
    from app.server import Server, bind, create_app

    manager = ModelManager()
    manager.load(hf_checkpoint("qwen3_moe"), engine="torch", wait=True)
    ctx = AppContext.create(manager, AppPaths(tmp_path_factory.mktemp("itamae-home")))
    server = Server(create_app(ctx, api_key=KEY), bind("127.0.0.1", 0))
    server.start()
    yield server, manager
    server.stop()
    manager.unload()


def test_streaming_through_the_app_shares_the_manager_with_the_ui(app_server):
    server, manager = app_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    question = "Hello from the API"
    # What the chat tab would get for the same question from the same manager.
    want = "".join(
        e.text
        for e in manager.stream(
            GenerationRequest(
                messages=[Message("user", question)],
                sampling=SamplingParams(temperature=0.0, max_tokens=10),
            )
        )
        if isinstance(e, TokenEvent)
    )
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=10,
        stream=True,
    )
    assert want and "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want


def test_the_key_guards_the_api_in_the_app(app_server):
    server, _ = app_server
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(
        server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}
    ).is_success


def test_a_client_that_goes_away_frees_the_model_in_the_app(app_server):
    server, manager = app_server
    headers = {"Authorization": f"Bearer {KEY}"}
    model = httpx.get(server.url + "/v1/models", headers=headers).json()["data"][0]["id"]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 3000,
        "stream": True,
    }
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        for n, _ in enumerate(response.iter_lines()):
            if n >= 4:
                break
        assert manager.busy
    deadline = time.monotonic() + 20
    while manager.busy:
        assert time.monotonic() < deadline, "the generation went on after its client left"
        time.sleep(0.05)
    # and the chat tab's next request gets the model at once
    done = threading.Event()
    threading.Thread(
        target=lambda: (
            list(
                manager.stream(
                    GenerationRequest(prompt="hi", sampling=SamplingParams(max_tokens=4))
                )
            ),
            done.set(),
        )
    ).start()
    assert done.wait(60)


def test_reloading_the_model_ends_an_api_stream_with_an_error(app_server, hf_checkpoint):
    """The person loads a model in the UI while an API client streams: that stream ends
    with an OpenAI-style error (not a silent stop), and the API serves the new model."""
    server, manager = app_server
    headers = {"Authorization": f"Bearer {KEY}"}
    model = httpx.get(server.url + "/v1/models", headers=headers).json()["data"][0]["id"]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 3000,
        "stream": True,
    }
    lines = []
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 4:  # streaming now: load a model as the UI would
                manager.load(hf_checkpoint("qwen3_moe"), engine="torch")
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["code"] == "interrupted"
    assert manager.wait(timeout=120).state == "ready"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    again = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert again.choices[0].finish_reason in ("stop", "length")
