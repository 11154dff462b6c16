"""The remote backend against a server nobody here wrote: llama-cpp-python's own
OpenAI-compatible server (`python -m llama_cpp.server`), serving a GGUF converted from
the tiny qwen3_moe fixture.

Reference: the same GGUF in llama-cpp-python's `Llama`, in this process, with the same
calls the server makes (create_chat_completion / create_completion, greedy, streamed).
Streamed, because that is what the remote backend asks for, and llama-cpp-python's
streaming is not always its non-streamed text: a token that ends inside a UTF-8
character can be dropped from the stream (seen here with 0.3.36 on Japanese text).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

import engine
from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent
from tests.serve_process import REPO, serve_env

llama_cpp = pytest.importorskip("llama_cpp")
# The server's own extra dependencies (llama-cpp-python[server]).
for module in ("sse_starlette", "starlette_context", "pydantic_settings"):
    pytest.importorskip(module, reason="llama-cpp-python[server] extras are not installed")

N_CTX = 512
GEN_TOKENS = 12
QUESTION = "What does a sushi chef do?"


@pytest.fixture(scope="module")
def gguf(hf_checkpoint, tmp_path_factory):
    from converters.conversion.convert import convert

    dest = tmp_path_factory.mktemp("llamacpp-server") / "qwen3_moe-f32.gguf"
    convert(hf_checkpoint("qwen3_moe"), dest, "F32")
    return dest


@pytest.fixture(scope="module")
def llama(gguf):
    return llama_cpp.Llama(str(gguf), n_ctx=N_CTX, verbose=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(gguf):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(N_CTX), "--verbose", "False"],
        cwd=REPO, env=serve_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "llama_cpp.server exited"
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llama_cpp.server did not start"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def remote(server):
    backend = engine.load(server, engine="remote")
    yield backend
    backend.close()


def greedy(**kind) -> GenerationRequest:
    return GenerationRequest(
        **kind, sampling=SamplingParams(temperature=0.0, max_tokens=GEN_TOKENS)
    )


def run(backend, req, cancel=None) -> tuple[str, FinalEvent]:
    events = list(backend.stream(req, cancel))
    assert isinstance(events[-1], FinalEvent)
    return "".join(e.text for e in events if isinstance(e, TokenEvent)), events[-1]


def test_model_is_the_one_the_server_lists(remote, server, gguf):
    listed = httpx.get(server + "/v1/models").json()["data"]
    assert remote.info.name == listed[0]["id"] == str(gguf)
    assert remote.info.format == "remote"


def test_chat_equals_llama_cpp_in_process(remote, llama):
    chunks = list(
        llama.create_chat_completion(
            [{"role": "user", "content": QUESTION}],
            temperature=0.0,
            max_tokens=GEN_TOKENS,
            stream=True,
        )
    )
    text, final = run(remote, greedy(messages=[Message("user", QUESTION)]))
    assert text and text == "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert final.finish_reason == chunks[-1]["choices"][0]["finish_reason"]


def test_completion_equals_llama_cpp_in_process(remote, llama):
    prompt = "The sushi chef"
    chunks = list(
        llama.create_completion(prompt, temperature=0.0, max_tokens=GEN_TOKENS, stream=True)
    )
    text, final = run(remote, greedy(prompt=prompt))
    assert text and text == "".join(c["choices"][0]["text"] for c in chunks)
    assert final.finish_reason == chunks[-1]["choices"][0]["finish_reason"]
    # This server sends no usage while streaming; the count comes from the stream.
    assert 0 < final.stats.completion_tokens <= GEN_TOKENS


def test_tokenize_uses_the_extras_endpoint(remote, llama):
    text = "寿司 and experts"
    assert remote.tokenize(text) == llama.tokenize(text.encode(), add_bos=True, special=True)


def test_cancel_ends_the_stream(remote):
    cancel = threading.Event()
    req = GenerationRequest(
        messages=[Message("user", QUESTION)],
        sampling=SamplingParams(temperature=0.0, max_tokens=N_CTX // 2),
    )
    events = remote.stream(req, cancel)
    assert isinstance(next(events), TokenEvent)
    cancel.set()
    assert list(events)[-1].finish_reason == "cancelled"
