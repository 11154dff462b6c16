"""`itamae serve` as clients see it: a real server process on a loopback port, the
official `openai` client, raw HTTP for what that client will not send.

The served model is the tiny qwen3_moe fixture on the torch engine. "Correct content"
means the text a greedy run of the same prompt gives when the engine is called
directly, in this process, without the API in between.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import anthropic
import httpx
import hypothesis as hyp
import hypothesis.strategies as st
import ollama
import openai
import pytest

import engine
from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent
from tests.serve_process import REPO, ServeProcess, itamae_command, serve_env

FIXTURE = "qwen3_moe"
ENGINE = "torch"
GEN_TOKENS = 12
# Eight different questions, one per concurrent client, so that a mixed-up stream shows.
PROMPTS = [
    "What is an expert in a mixture of experts?",
    "寿司職人について教えてください。",
    "Count from one to five.",
    "Why is the sky blue?",
    "東京の天気はどうですか？",
    "Name three colours.",
    "What does a router do in a transformer?",
    "Say hello in Japanese.",
]


@pytest.fixture(scope="module")
def model_path(hf_checkpoint):
    return hf_checkpoint(FIXTURE)


@pytest.fixture(scope="module")
def server(model_path):
    with ServeProcess("--model", str(model_path), "--engine", ENGINE) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(model_path):
    """Greedy text per prompt (chat and raw), straight from the engine."""
    backend = engine.load(model_path, engine=ENGINE)
    cache: dict = {}

    def run(prompt: str, chat: bool = True, max_tokens: int = GEN_TOKENS) -> tuple[str, FinalEvent]:
        key = (prompt, chat, max_tokens)
        if key not in cache:
            sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
            if chat:
                req = GenerationRequest(messages=[Message("user", prompt)], sampling=sampling)
            else:
                req = GenerationRequest(prompt=prompt, sampling=sampling)
            events = list(backend.stream(req))
            text = "".join(e.text for e in events if isinstance(e, TokenEvent))
            cache[key] = (text, events[-1])
        return cache[key]

    yield run
    backend.close()


def chat_body(server, prompt, **fields):
    return {
        "model": server.model_id,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": GEN_TOKENS,
        **fields,
    }


# -- the official client ---------------------------------------------------------------


def test_models_lists_the_served_model(client, server, model_path):
    models = client.models.list().data
    assert [m.id for m in models] == [server.model_id]
    assert client.models.retrieve(server.model_id).id == server.model_id


def test_chat_non_streaming_matches_the_engine(client, server, reference):
    want, final = reference(PROMPTS[0])
    got = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        temperature=0,
        max_tokens=GEN_TOKENS,
    )
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want
    assert got.choices[0].finish_reason == final.finish_reason
    assert got.usage.prompt_tokens == final.stats.prompt_tokens > 0
    assert got.usage.completion_tokens == final.stats.completion_tokens
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_chat_streaming_matches_the_engine(client, server, reference):
    want, final = reference(PROMPTS[1])
    chunks = list(
        client.chat.completions.create(
            model=server.model_id,
            messages=[{"role": "user", "content": PROMPTS[1]}],
            temperature=0,
            max_tokens=GEN_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == final.finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == final.stats.completion_tokens


def test_completions_streaming_and_not(client, server, reference):
    prompt = "The sushi chef"
    want, final = reference(prompt, chat=False)
    whole = client.completions.create(
        model=server.model_id, prompt=prompt, temperature=0, max_tokens=GEN_TOKENS
    )
    assert whole.choices[0].text == want
    assert whole.usage.completion_tokens == final.stats.completion_tokens
    streamed = client.completions.create(
        model=server.model_id, prompt=prompt, temperature=0, max_tokens=GEN_TOKENS, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == want


def test_max_tokens_limits_the_answer(client, server):
    got = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": PROMPTS[2]}],
        temperature=0,
        max_tokens=3,
    )
    assert got.usage.completion_tokens <= 3
    if got.usage.completion_tokens == 3:
        assert got.choices[0].finish_reason == "length"


# -- many clients at once --------------------------------------------------------------


def test_eight_concurrent_streams_each_get_their_own_answer(server, reference):
    wants = [reference(p)[0] for p in PROMPTS]
    assert all(wants) and len(set(wants)) == len(wants)  # a mix-up would show
    results: list = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def one_client(i: int) -> None:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
        barrier.wait()  # all eight ask at the same moment
        try:
            stream = client.chat.completions.create(
                model=server.model_id,
                messages=[{"role": "user", "content": PROMPTS[i]}],
                temperature=0,
                max_tokens=GEN_TOKENS,
                stream=True,
            )
            results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as e:  # reported below with the client's number
            results[i] = e

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert results == wants


def _ask_over(surface: str, server, prompt: str) -> str:
    """One streamed greedy chat turn through the OpenAI, Ollama or Anthropic client."""
    if surface == "ollama":
        client = ollama.Client(host=server.root, timeout=300)
        parts = client.chat(
            model=server.model_id,
            messages=[{"role": "user", "content": prompt}],
            options={"temperature": 0, "num_predict": GEN_TOKENS},
            stream=True,
        )
        return "".join(p.message.content for p in parts)
    if surface == "anthropic":
        client = anthropic.Anthropic(base_url=server.root, api_key="unused", max_retries=0)
        with client.messages.stream(
            model=server.model_id,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=GEN_TOKENS,
            extra_body={"temperature": 0},
        ) as stream:
            return "".join(stream.text_stream)
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=GEN_TOKENS,
        stream=True,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_eight_concurrent_clients_over_three_surfaces(server, reference):
    """The same fair queue behind OpenAI's, Ollama's and Anthropic's surfaces: eight
    clients of the three kinds at once, each gets its own answer."""
    wants = [reference(p)[0] for p in PROMPTS]
    surfaces = ["openai", "ollama", "anthropic"]
    results: list = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def one_client(i: int) -> None:
        barrier.wait()
        try:
            results[i] = _ask_over(surfaces[i % 3], server, PROMPTS[i])
        except Exception as e:  # reported below with the client's number
            results[i] = e

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert results == wants


def test_a_disconnected_client_frees_the_model(server, reference):
    """A long generation is dropped after a few chunks; the next request must not
    wait for it to run to its end."""
    # How long one short answer takes here, to compare the wait with.
    started = time.monotonic()
    httpx.post(server.url + "/chat/completions", json=chat_body(server, PROMPTS[4]), timeout=300)
    short_s = time.monotonic() - started

    long_body = chat_body(server, PROMPTS[3], max_tokens=2000, stream=True)
    with httpx.stream("POST", server.url + "/chat/completions", json=long_body, timeout=300) as r:
        assert r.status_code == 200
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data:")
            if chunks >= 3:
                break
    # The connection is closed here, long before 2000 tokens.
    started = time.monotonic()
    got = httpx.post(
        server.url + "/chat/completions", json=chat_body(server, PROMPTS[4]), timeout=300
    )
    waited = time.monotonic() - started
    assert got.status_code == 200
    assert got.json()["choices"][0]["message"]["content"] == reference(PROMPTS[4])[0]
    # 2000 tokens take about 170 short answers' time; the margin is for the disconnect
    # to be noticed on a loaded machine.
    assert waited < 10 * short_s + 5, (waited, short_s)
    assert httpx.get(server.root + "/health").json()["busy"] is False


def test_a_non_streaming_client_that_gives_up_frees_the_model(server):
    """Without a stream there is nothing to write to notice the client is gone; the
    server must look for itself while it generates."""
    body = chat_body(server, PROMPTS[2], max_tokens=2000)
    with pytest.raises(httpx.ReadTimeout):  # the compiled step decodes the demo at ~1000 tok/s
        httpx.post(server.url + "/chat/completions", json=body, timeout=0.5)
    wait_for(lambda: not httpx.get(server.root + "/health").json()["busy"], timeout=30)


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_queued_requests_are_served_in_order_and_a_leaver_is_skipped(server, reference):
    """Three requests queue behind a long stream; the middle one gives up before its
    turn. It leaves the queue, and the other two are served in arrival order with
    their own answers."""
    health = lambda: httpx.get(server.root + "/health").json()  # noqa: E731
    holder = httpx.Client(timeout=300)
    long_body = chat_body(server, PROMPTS[5], max_tokens=2000, stream=True)
    first = holder.send(
        holder.build_request("POST", server.url + "/chat/completions", json=long_body),
        stream=True,
    )
    assert first.status_code == 200  # it holds the model from here on
    results, finished = {}, []

    def ask(i, timeout):
        try:
            response = httpx.post(
                server.url + "/chat/completions",
                json=chat_body(server, PROMPTS[i]),
                timeout=timeout,
            )
            results[i] = response.json()["choices"][0]["message"]["content"]
        except httpx.TimeoutException:
            results[i] = "gave up"
        finished.append(i)

    threads = [
        threading.Thread(target=ask, args=(6, 300)),
        threading.Thread(target=ask, args=(7, 2.0)),
        threading.Thread(target=ask, args=(0, 300)),
    ]
    for n, t in enumerate(threads, start=1):
        t.start()
        wait_for(lambda n=n: health()["queue"] == n)
    wait_for(lambda: results.get(7) == "gave up")
    wait_for(lambda: health()["queue"] == 2)  # the one that gave up is gone from the queue
    first.close()  # the long stream's client goes away too
    holder.close()
    for t in threads:
        t.join(timeout=600)
    assert results == {6: reference(PROMPTS[6])[0], 7: "gave up", 0: reference(PROMPTS[0])[0]}
    assert finished == [7, 6, 0]


# -- bad requests ----------------------------------------------------------------------


def _bad_requests(server):
    model = server.model_id
    chat = "/chat/completions"
    ok = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    too_long = "寿司 " * 6000  # well past the fixture's 4096-token context
    return [
        # (path, raw body or JSON, status, param or None)
        (chat, b"{not json", 400, None),
        (chat, b"\xff\xfe", 400, None),
        (chat, b"[1, 2]", 400, None),
        (chat, {"messages": ok["messages"]}, 400, "model"),
        (chat, {**ok, "model": "gpt-4o"}, 404, "model"),
        (chat, {"model": model}, 400, "messages"),
        (chat, {"model": model, "messages": []}, 400, "messages"),
        (chat, {"model": model, "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
        (chat, {"model": model, "messages": ["hi"]}, 400, None),
        (chat, {**ok, "max_tokens": -1}, 400, "max_tokens"),
        (chat, {**ok, "max_tokens": 0}, 400, "max_tokens"),
        (chat, {**ok, "max_tokens": "ten"}, 400, "max_tokens"),
        (chat, {**ok, "temperature": 2.5}, 400, "temperature"),
        (chat, {**ok, "temperature": -0.1}, 400, "temperature"),
        (chat, {**ok, "top_p": 0}, 400, "top_p"),
        (chat, {**ok, "top_p": 1.5}, 400, "top_p"),
        (chat, {**ok, "n": 2}, 400, "n"),
        (chat, {**ok, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        (chat, {**ok, "stop": 5}, 400, "stop"),
        (chat, {**ok, "stream": "yes"}, 400, "stream"),
        (chat, {**ok, "messages": [{"role": "user", "content": too_long}]}, 400, "messages"),
        ("/completions", {"model": model, "prompt": too_long}, 400, "prompt"),
        ("/completions", {"model": model, "prompt": 42}, 400, "prompt"),
        ("/completions", {"model": model, "prompt": "x", "echo": True}, 400, "echo"),
    ]


def test_malformed_requests_get_4xx_with_an_error_body(server):
    for path, body, status, param in _bad_requests(server):
        if isinstance(body, bytes):
            response = httpx.post(
                server.url + path,
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
        else:
            response = httpx.post(server.url + path, json=body, timeout=60)
        assert response.status_code == status, (
            body if isinstance(body, bytes) else body,
            response.text,
        )
        error = response.json()["error"]
        assert error["message"] and error["type"], error
        if param is not None:
            assert error["param"] == param, error
    too_long = httpx.post(
        server.url + "/completions", json=_bad_requests(server)[-3][1], timeout=60
    )
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    # Still serving after all of that.
    assert server.alive()
    assert httpx.get(server.url + "/models", timeout=10).status_code == 200


# Any JSON value, nested a little.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = ["model", "messages", "prompt", "temperature", "top_p", "top_k", "min_p", "seed",
          "repeat_penalty", "n", "stop", "stream", "stream_options", "logprobs",
          "experts_per_token", "presence_penalty", "frequency_penalty", "echo", "suffix"]  # fmt: skip


def fuzz_bodies(model: str):
    """A valid body (for either endpoint) with one to three fields set to any JSON."""
    base = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "prompt": "hi",
        "max_tokens": 2,
    }
    # max_tokens stays small when it is valid: a fuzzed request that happens to be
    # valid must not generate for minutes.
    small_or_junk = st.integers(-3, 3) | JSON.filter(
        lambda v: v is not None and not isinstance(v, int)
    )
    changes = st.dictionaries(st.sampled_from(FIELDS), JSON, min_size=1, max_size=3)
    message = st.fixed_dictionaries({}, optional={"role": JSON, "content": JSON})
    return st.one_of(
        st.builds(lambda c, m: {**base, **c, "max_tokens": m}, changes, small_or_junk),
        st.builds(lambda ms: {**base, "messages": ms}, st.lists(message, max_size=3)),
    )


def test_fuzzed_requests_never_break_the_server(server):
    """Random bodies, valid or not, to both endpoints: never a 5xx, always an error body
    with a 4xx, and every 200 stream ends with [DONE]."""
    seen = set()

    valid = dict(model=server.model_id, messages=[{"role": "user", "content": "hi"}])
    valid.update(prompt="hi", max_tokens=2)

    # The untouched valid body is always among the examples: how many valid bodies the
    # fuzzer draws changes whenever the set of refused fields does.
    @hyp.settings(max_examples=80, deadline=None, derandomize=True, database=None)
    @hyp.given(
        body=fuzz_bodies(server.model_id),
        path=st.sampled_from(["/chat/completions", "/completions"]),
    )
    @hyp.example(body=valid, path="/chat/completions")
    @hyp.example(body={**valid, "stream": True}, path="/completions")
    def check(body, path):
        response = httpx.post(  # json.dumps, unlike httpx, writes NaN and Infinity
            server.url + path,
            content=json.dumps(_for_endpoint(body, path)),
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        seen.add(response.status_code)
        assert response.status_code in (200, 400, 404), (body, response.text)
        if response.status_code != 200:
            assert response.json()["error"]["message"]
        elif body.get("stream") is True:
            assert response.text.rstrip().endswith("data: [DONE]"), response.text

    check()
    assert server.alive()
    assert {200, 400} <= seen


def _for_endpoint(body: dict, path: str) -> dict:
    """The fuzzed body without the other endpoint's own field, unless the fuzzer set it:
    a field an endpoint does not know is refused (400), so an untouched base stays valid."""
    other = "prompt" if path == "/chat/completions" else "messages"
    base_value = {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}[other]
    return {k: v for k, v in body.items() if not (k == other and v == base_value)}


def test_a_prompt_that_overflows_only_with_the_template_is_a_400(server):
    """The message text alone fits the context; the chat template's own tokens do not.
    The API cannot count those itself on this engine, so the engine's refusal must
    still come back as a 400 context_length_exceeded, not a 500."""
    context = httpx.get(server.url + "/models").json()["data"][0]["max_model_len"]

    def tokens(text):
        return httpx.post(server.root + "/tokenize", json={"prompt": text}).json()["count"]

    text, count = "", tokens("")
    while count < context - 2:  # each "a " adds at most one token: approach from below
        text += "a " * (context - 2 - count)
        count = tokens(text)
    assert count < context
    response = httpx.post(server.url + "/chat/completions", json=chat_body(server, text))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_the_openai_client_raises_its_own_errors(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=server.model_id, messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert e.value.body["param"] == "temperature"


def test_cross_origin_browsers_get_no_cors_headers_by_default(server):
    response = httpx.options(
        server.url + "/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers
    response = httpx.get(server.url + "/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


# -- keys and addresses ----------------------------------------------------------------


def test_api_key_is_required_when_set(model_path):
    key = "s3cret-key"
    with ServeProcess("--model", str(model_path), "--engine", ENGINE, api_key=key) as s:
        assert httpx.get(s.url + "/models").status_code == 401
        wrong = httpx.get(s.url + "/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        unauth = httpx.post(s.url + "/chat/completions", json=chat_body(s, "hi"))
        assert unauth.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=s.url, api_key=key, max_retries=0)
        answer = good.chat.completions.create(
            model=s.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert answer.usage.completion_tokens <= 2


def test_cors_origin_allows_that_origin_only(model_path):
    origin = "http://localhost:3000"
    with ServeProcess("--model", str(model_path), "--engine", ENGINE, "--cors-origin", origin) as s:
        allowed = httpx.get(s.url + "/models", headers={"Origin": origin})
        assert allowed.headers.get("access-control-allow-origin") == origin
        other = httpx.get(s.url + "/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_non_loopback_host_needs_an_api_key():
    result = subprocess.run(
        itamae_command("serve", "--host", "0.0.0.0", "--port", "0"),
        cwd=REPO,
        env=serve_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--api-key" in result.stderr and "0.0.0.0" in result.stderr


def test_a_model_that_fails_to_load_ends_serve_with_the_reason(tmp_path):
    result = subprocess.run(
        itamae_command("serve", "--model", str(tmp_path / "missing"), "--port", "0"),
        cwd=REPO,
        env=serve_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "No model at" in result.stderr


def _demo_present() -> bool:
    from engine.loader import DEMO_DIR

    return (DEMO_DIR / "hf" / "config.json").is_file()


@pytest.mark.skipif(not _demo_present(), reason="the bundled demo model is not built yet")
def test_the_openai_client_chats_with_the_demo_model():
    """`itamae serve` with no --model serves the bundled demo; a question from its
    dialogs gets a real answer, streamed and not, each the same greedy text."""
    with ServeProcess() as s:
        assert s.model_id == "demo"
        client = openai.OpenAI(base_url=s.url, api_key="unused", max_retries=0, timeout=300)
        ask = dict(
            model="demo",
            messages=[{"role": "user", "content": "Hello"}],
            temperature=0,
            max_tokens=48,
        )
        whole = client.chat.completions.create(**ask)
        streamed = client.chat.completions.create(**ask, stream=True)
        text = whole.choices[0].message.content
        assert text.strip() and whole.usage.completion_tokens > 0
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
