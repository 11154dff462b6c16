"""The Ollama surface of `itamae serve`, driven by the official `ollama` Python client:
list, show, ps, chat (streamed and not, with tools and `format`), generate.

The served model is the demo on the torch engine; "the right text" is what the OpenAI
surface of the same server answers for the same greedy request.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from engine.loader import DEMO_DIR
from tests.serve_process import ServeProcess
from tests.test_api_tools import TRIP, WEATHER

ASK = [{"role": "user", "content": "Hello"}]
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def server():
    with ServeProcess("--model", str(DEMO_DIR / "hf"), "--engine", "torch", api_key="k") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.root, headers={"Authorization": "Bearer k"}, timeout=300)


@pytest.fixture(scope="module")
def openai_text(server):
    client = openai.OpenAI(base_url=server.url, api_key="k", max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model=server.model_id, messages=ASK, temperature=0, max_tokens=24
    )
    return reply.choices[0].message.content


def test_list_show_and_ps_name_the_served_model(client, server):
    names = [m.model for m in client.list().models]
    assert names == [f"{server.model_id}:latest"]
    shown = client.show(names[0])
    assert shown.details.family and shown.modelinfo["general.architecture"]
    assert "completion" in shown.capabilities
    assert [m.model for m in client.ps().models] == names
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("llama3:8b")
    assert missing.value.status_code == 404


def test_chat_whole_and_streamed_give_the_openai_answer(client, server, openai_text):
    whole = client.chat(model=server.model_id, messages=ASK, options=GREEDY)
    assert whole.message.content == openai_text and whole.done
    assert whole.eval_count > 0 and whole.prompt_eval_count > 0
    parts = list(client.chat(model=server.model_id, messages=ASK, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == openai_text
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert not any(p.done for p in parts[:-1])


def test_generate_answers_as_a_chat_turn(client, server, openai_text):
    reply = client.generate(model=server.model_id, prompt="Hello", options=GREEDY)
    assert reply.response == openai_text
    streamed = client.generate(model=server.model_id, prompt="Hello", options=GREEDY, stream=True)
    assert "".join(p.response for p in streamed) == openai_text


def test_chat_with_a_schema_format_validates(client, server):
    reply = client.chat(
        model=server.model_id,
        messages=[{"role": "user", "content": "Plan a trip to Kyoto."}],
        format=TRIP,
        options={"temperature": 0, "num_predict": 80},
    )
    jsonschema.validate(json.loads(reply.message.content), TRIP)
    as_json = client.chat(
        model=server.model_id,
        messages=ASK,
        format="json",
        options={"temperature": 0, "num_predict": 200},
    )
    assert as_json.message.content.startswith("{")


def test_chat_with_tools_gives_the_model_the_tools(client, server):
    # Ollama has no tool_choice, so whether a tiny model calls is its own affair; the
    # tools reach its prompt, and streamed and whole replies agree, calls included.
    ask = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    options = {"temperature": 0, "num_predict": 40}
    plain = client.chat(model=server.model_id, messages=ask, options=options)
    whole = client.chat(model=server.model_id, messages=ask, tools=[WEATHER], options=options)
    assert whole.prompt_eval_count > plain.prompt_eval_count + 20
    last = list(
        client.chat(
            model=server.model_id, messages=ask, tools=[WEATHER], options=options, stream=True
        )
    )[-1]
    assert last.message.content == whole.message.content
    assert last.message.tool_calls == whole.message.tool_calls
    for call in whole.message.tool_calls or []:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)


def test_a_tool_call_in_the_history_is_accepted(client, server):
    history = [
        {"role": "user", "content": "What is the weather in Tokyo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {
                        "name": "get_weather",
                        "arguments": {"city": "Tokyo", "unit": "celsius"},
                    }
                }
            ],
        },
        {"role": "tool", "content": '{"temperature": 21}', "tool_name": "get_weather"},
    ]
    reply = client.chat(
        model=server.model_id,
        messages=history,
        tools=[WEATHER],
        options={"temperature": 0, "num_predict": 8},
    )
    assert reply.done


def test_unknown_options_and_fields_are_refused(server):
    headers = {"Authorization": "Bearer k"}
    for body in (
        {"model": server.model_id, "messages": ASK, "options": {"mirostat": 2}},
        {"model": server.model_id, "messages": ASK, "frobnicate": True},
        {"model": server.model_id, "messages": ASK, "options": {"num_ctx": 10**7}},
    ):
        response = httpx.post(server.root + "/api/chat", json=body, headers=headers, timeout=60)
        assert response.status_code == 400 and response.json()["error"]


def test_the_key_guards_the_ollama_surface(server):
    assert httpx.get(server.root + "/api/tags").status_code == 401
    assert httpx.get(server.root + "/api/version", headers={"x-api-key": "k"}).status_code == 200


def test_logprobs_whole_and_streamed(client, server):
    ask = dict(model=server.model_id, messages=ASK, options=GREEDY, logprobs=True, top_logprobs=2)
    whole = client.chat(**ask)
    assert len(whole.logprobs) == whole.eval_count
    for entry in whole.logprobs:
        top = [t.logprob for t in entry.top_logprobs]
        assert entry.logprob <= 0 and top == sorted(top, reverse=True)
        assert entry.logprob == pytest.approx(top[0], abs=1e-5)  # greedy
    streamed = [lp for part in client.chat(**ask, stream=True) for lp in part.logprobs or []]
    assert [e.token for e in streamed] == [e.token for e in whole.logprobs]
