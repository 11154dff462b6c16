"""`itamae serve` on the llama.cpp engine: a GGUF converted from the qwen3_moe fixture.

The same API over the other local engine: the official client gets what the llama.cpp
backend gives in this process, and the prompt-length check is exact here (the backend
renders the chat template and counts the very tokens it would run).
"""

from __future__ import annotations

import httpx
import openai
import pytest

import engine
from engine.types import GenerationRequest, Message, SamplingParams, TokenEvent
from tests.serve_process import ServeProcess

pytest.importorskip("llama_cpp")

N_CTX = 256
QUESTION = "寿司を一つください。"


@pytest.fixture(scope="module")
def gguf(hf_checkpoint, tmp_path_factory):
    from converters.conversion.convert import convert

    dest = tmp_path_factory.mktemp("api-llamacpp") / "qwen3_moe-f32.gguf"
    convert(hf_checkpoint("qwen3_moe"), dest, "F32")
    return dest


@pytest.fixture(scope="module")
def local(gguf):
    backend = engine.load(gguf, engine="llamacpp", n_ctx=N_CTX)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def server(gguf):
    # serve has no --n-ctx; the llama.cpp backend's planner picks the context, and
    # /v1/models reports it (max_model_len).
    with ServeProcess("--model", str(gguf), "--engine", "llamacpp") as s:
        yield s


def test_streamed_chat_equals_the_backend(server, local):
    req = GenerationRequest(
        messages=[Message("user", QUESTION)],
        sampling=SamplingParams(temperature=0.0, max_tokens=10),
    )
    want = "".join(e.text for e in local.stream(req) if isinstance(e, TokenEvent))
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    chunks = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(chunks)
    assert want and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.prompt_tokens == len(local.prompt_tokens(req))


def test_prompt_longer_than_the_context_is_a_400(server):
    context = httpx.get(server.url + "/models").json()["data"][0]["max_model_len"]
    assert context

    # Short enough that the message text alone fits; the template's own tokens push it
    # over, which only the exact count sees.
    def tokens(text):
        return len(httpx.post(server.root + "/tokenize", json={"prompt": text}).json()["tokens"])

    long, count = "", tokens("")
    while count < context - 4:  # each "a " adds at most one token: approach from below
        long += "a " * (context - 4 - count)
        count = tokens(long)
    assert count < context
    response = httpx.post(
        server.url + "/chat/completions",
        json={"model": server.model_id, "messages": [{"role": "user", "content": long}]},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
