"""The remote backend against a real OpenAI-compatible server: a second Itamae
(`itamae serve` in a subprocess) serving the tiny qwen3_moe fixture on the torch engine.

What arrives through the remote backend must be what the engine gives when called
directly in this process: the same greedy text and token counts.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest

import engine
from engine.remote.backend import RemoteError, api_base, list_models
from engine.remote.sse import read_whole
from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent
from tests.serve_process import ServeProcess

FIXTURE = "qwen3_moe"
GEN_TOKENS = 12
QUESTION = "What does a sushi chef do?"


def greedy(req_kind: str, text: str, max_tokens: int = GEN_TOKENS) -> GenerationRequest:
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    if req_kind == "chat":
        return GenerationRequest(messages=[Message("user", text)], sampling=sampling)
    return GenerationRequest(prompt=text, sampling=sampling)


def run(backend, req, cancel=None) -> tuple[str, FinalEvent]:
    return run_events(list(backend.stream(req, cancel)))


def run_events(events) -> tuple[str, FinalEvent]:
    assert isinstance(events[-1], FinalEvent)
    assert all(isinstance(e, TokenEvent) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events[-1]


@pytest.fixture(scope="module")
def model_path(hf_checkpoint):
    return hf_checkpoint(FIXTURE)


@pytest.fixture(scope="module")
def local(model_path):
    backend = engine.load(model_path, engine="torch")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def server(model_path):
    with ServeProcess("--model", str(model_path), "--engine", "torch") as s:
        yield s


@pytest.fixture(scope="module")
def remote(server):
    backend = engine.load(server.url)  # a URL picks the remote engine
    yield backend
    backend.close()


def test_list_models_names_what_the_server_serves(server):
    assert list_models(server.url) == [server.model_id]


def test_api_base_accepts_the_usual_spellings():
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert api_base(url) == "http://h:8000/v1"


def test_model_info_comes_from_v1_models(remote, server, local):
    assert remote.info.format == "remote"
    assert remote.info.name == server.model_id
    assert remote.info.context_length == local.info.context_length > 0
    assert remote.info.arch == local.info.arch


@pytest.mark.parametrize("kind", ["chat", "prompt"])
def test_remote_generation_equals_the_local_engine(remote, local, kind):
    want, want_final = run(local, greedy(kind, QUESTION))
    got, final = run(remote, greedy(kind, QUESTION))
    assert got == want
    assert final.finish_reason == want_final.finish_reason
    assert final.stats.prompt_tokens == want_final.stats.prompt_tokens
    assert final.stats.completion_tokens == want_final.stats.completion_tokens
    assert final.stats.ttft_s > 0


def test_tokenize_asks_the_server(remote, local):
    text = "寿司 and experts"
    assert remote.tokenize(text) == local.tokenize(text)


def test_cancel_stops_the_remote_generation(remote, server):
    cancel = threading.Event()
    events = remote.stream(greedy("chat", QUESTION, max_tokens=2000), cancel)
    assert isinstance(next(events), TokenEvent)
    cancel.set()
    started = time.monotonic()
    rest = list(events)
    assert rest[-1].finish_reason == "cancelled"
    assert time.monotonic() - started < 5
    # The server saw its client go and freed the model.
    deadline = time.monotonic() + 30
    while httpx.get(server.root + "/health").json()["busy"]:
        assert time.monotonic() < deadline, "the server kept generating"
        time.sleep(0.05)


def test_server_side_errors_end_the_stream_with_their_message(remote):
    too_long = "寿司 " * 6000
    text, final = run(remote, greedy("prompt", too_long))
    assert text == ""
    assert final.finish_reason == "error"
    assert "context" in final.error and "400" in final.error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RemoteError, match="Cannot reach"):
        engine.load(url)


def test_unknown_model_lists_what_the_server_has(server):
    with pytest.raises(RemoteError, match=server.model_id):
        engine.load(server.url, model="no-such-model")


def test_api_key_is_sent_and_a_wrong_one_is_reported(model_path):
    key = "remote-key"
    with ServeProcess("--model", str(model_path), "--engine", "torch", api_key=key) as s:
        with pytest.raises(RemoteError, match="401"):
            engine.load(s.url, api_key="wrong")
        backend = engine.load(s.url, api_key=key)
        try:
            text, final = run(backend, greedy("chat", QUESTION, max_tokens=3))
            assert final.finish_reason in ("stop", "length") and final.stats.completion_tokens
        finally:
            backend.close()
        # itamae serve in front of it passes the key on (--remote-api-key)
        with ServeProcess("--model", s.url, "--remote-api-key", key) as front:
            assert front.model_id == s.model_id


def test_itamae_serves_a_remote_model_to_the_openai_client(server, local):
    """Two hops: openai client -> itamae serve --engine remote -> itamae serve (torch)."""
    want, _ = run(local, greedy("chat", QUESTION))
    with ServeProcess("--model", server.url, "--engine", "remote") as front:
        assert front.model_id == server.model_id
        client = openai.OpenAI(base_url=front.url, api_key="unused", max_retries=0)
        chunks = client.chat.completions.create(
            model=front.model_id,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=GEN_TOKENS,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want


def test_a_whole_answer_reads_like_a_stream(remote, server):
    """read_whole (for servers that ignore `stream`) on a real non-streamed answer."""
    body = {**remote._body(greedy("chat", QUESTION), chat=True), "stream": False}
    body.pop("stream_options")
    data = httpx.post(server.url + "/chat/completions", json=body, timeout=120).json()
    whole_text, whole_final = run_events(list(read_whole(data, True, time.perf_counter())))
    streamed_text, streamed_final = run(remote, greedy("chat", QUESTION))
    assert whole_text == streamed_text
    assert whole_final.stats.completion_tokens == streamed_final.stats.completion_tokens


def test_a_server_that_dies_mid_answer_is_an_error(model_path):
    with ServeProcess("--model", str(model_path), "--engine", "torch") as s:
        backend = engine.load(s.url)
        try:
            events = backend.stream(greedy("chat", QUESTION, max_tokens=2000))
            assert isinstance(next(events), TokenEvent)
            s.proc.kill()
            final = list(events)[-1]
            assert final.finish_reason == "error", final
        finally:
            backend.close()
