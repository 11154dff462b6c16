"""Tool calls, structured output, logprobs and logit_bias through `itamae serve`, with the
official `openai` client, on both local engines (the demo model as HF checkpoint on the
torch engine, as GGUF on the llama.cpp engine) and on the qwen3_moe fixture.

Arguments and JSON answers are checked with the `jsonschema` package against the schema
the request gave; a tiny model writes nonsense values, so the schemas bound string
lengths (the grammar then has to close the JSON within max_tokens).
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from engine.loader import DEMO_DIR
from tests.serve_process import ServeProcess

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 8}},
            "required": ["zone"],
        },
    },
}
TRIP = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "nights": {"enum": [1, 2, 3]},
        "tags": {"type": "array", "items": {"enum": ["rain", "sun"]}, "maxItems": 3},
    },
    "required": ["city", "nights", "tags"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "What is the weather in Tokyo?"}]
ENGINES = {
    "demo-torch": ("--model", str(DEMO_DIR / "hf"), "--engine", "torch"),
    "demo-llamacpp": ("--model", str(DEMO_DIR / "itamae-demo-Q8_0.gguf"), "--engine", "llamacpp"),
}


@pytest.fixture(scope="module", params=list(ENGINES))
def server(request):
    with ServeProcess(*ENGINES[request.param]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


def _call(client, model, **extra):
    return client.chat.completions.create(
        model=model, messages=ASK, temperature=0, max_tokens=80, **extra
    )


def _check_call(call, tool) -> dict:
    assert call.type == "function" and call.id
    assert call.function.name == tool["function"]["name"]
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


def test_a_named_tool_choice_returns_a_valid_call(client, server):
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = _call(client, server.model_id, tools=[TIME, WEATHER], tool_choice=named)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0], WEATHER)


def test_required_chooses_one_of_the_tools(client, server):
    reply = _call(client, server.model_id, tools=[WEATHER, TIME], tool_choice="required")
    call = reply.choices[0].message.tool_calls[0]
    _check_call(call, {"get_weather": WEATHER, "get_time": TIME}[call.function.name])


def test_streamed_tool_calls_assemble_to_the_same_call(client, server):
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = _call(client, server.model_id, tools=[WEATHER], tool_choice=named)
    chunks = list(_call(client, server.model_id, tools=[WEATHER], tool_choice=named, stream=True))
    name, arguments, finish = "", "", None
    for chunk in chunks:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            assert delta_call.index == 0
            name += delta_call.function.name or ""
            arguments += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    expected = whole.choices[0].message.tool_calls[0].function
    assert (name, arguments, finish) == (expected.name, expected.arguments, "tool_calls")
    # the openai client's own stream helper assembles the same call
    with client.beta.chat.completions.stream(
        model=server.model_id,
        messages=ASK,
        temperature=0,
        max_tokens=80,
        tools=[WEATHER],
        tool_choice=named,
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == expected.arguments


def test_a_tool_result_round_trip(client, server):
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = _call(client, server.model_id, tools=[WEATHER], tool_choice=named).choices[0]
    call = first.message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    reply = client.chat.completions.create(
        model=server.model_id, messages=history, tools=[WEATHER], temperature=0, max_tokens=16
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage.prompt_tokens > _call(client, server.model_id).usage.prompt_tokens


def test_json_schema_output_parses_and_validates(client, server):
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": TRIP, "strict": True}}
    reply = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": "Plan a trip to Kyoto."}],
        response_format=fmt,
        temperature=0,
        max_tokens=80,
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), TRIP)


def test_json_object_output_is_a_json_object(client, server):
    for seed in (1, 2):
        reply = client.chat.completions.create(
            model=server.model_id,
            messages=[{"role": "user", "content": "Hello"}],
            response_format={"type": "json_object"},
            temperature=0.7,
            seed=seed,
            max_tokens=200,
        )
        text = reply.choices[0].message.content
        if reply.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("{")


def test_logprobs_are_sensible(client, server):
    reply = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": "Hello"}],
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        top = [t.logprob for t in entry.top_logprobs]
        assert entry.logprob <= 0 and all(v <= 0 for v in top)
        assert top == sorted(top, reverse=True) and len(top) == 3
        # greedy: the chosen token is the likeliest one
        assert entry.logprob == pytest.approx(top[0], abs=1e-5)
        assert entry.token == entry.top_logprobs[0].token
    streamed = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": "Hello"}],
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    tokens = [
        e.token
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert tokens == [e.token for e in entries]


def test_completion_logprobs_and_logit_bias(client, server):
    plain = client.completions.create(
        model=server.model_id, prompt="Hello", temperature=0, max_tokens=1, logprobs=2
    )
    lp = plain.choices[0].logprobs
    assert len(lp.tokens) == 1 and lp.token_logprobs[0] <= 0
    # push the runner-up first: logit_bias is applied before the greedy choice
    runner_up = sorted(lp.top_logprobs[0].items(), key=lambda kv: -kv[1])[1][0]
    ids = httpx.post(server.root + "/tokenize", json={"prompt": runner_up}).json()["tokens"]
    biased = client.completions.create(
        model=server.model_id,
        prompt="Hello",
        temperature=0,
        max_tokens=1,
        logprobs=1,
        logit_bias={str(ids[-1]): 100},
    )
    assert biased.choices[0].logprobs.tokens[0] == runner_up


def test_same_seed_same_tokens(client, server):
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": TRIP}}
    for extra in ({}, {"response_format": fmt}):
        ask = dict(
            model=server.model_id, messages=ASK, temperature=1.0, max_tokens=40, seed=42, **extra
        )
        first = client.chat.completions.create(**ask).choices[0].message.content
        assert client.chat.completions.create(**ask).choices[0].message.content == first


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"frobnicate": 1}, "frobnicate"),
        ({"n": 2}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}},
                }
            },
            "response_format",
        ),
    ],
)
def test_unsupported_requests_are_400s_naming_the_field(server, extra, param):
    body = {"model": server.model_id, "messages": ASK, "max_tokens": 4, **extra}
    response = httpx.post(server.url + "/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def fixture_gguf(hf_checkpoint, tmp_path_factory):
    from converters.conversion.convert import convert

    dest = tmp_path_factory.mktemp("api-tools") / "qwen3_moe-f32.gguf"
    convert(hf_checkpoint("qwen3_moe"), dest, "F32")
    return dest


@pytest.mark.parametrize("engine", ["torch", "llamacpp"])
def test_a_fixture_model_makes_a_named_call_and_valid_json(engine, hf_checkpoint, request):
    path = (
        hf_checkpoint("qwen3_moe") if engine == "torch" else request.getfixturevalue("fixture_gguf")
    )
    with ServeProcess("--model", str(path), "--engine", engine) as s:
        client = openai.OpenAI(base_url=s.url, api_key="unused", max_retries=0, timeout=300)
        named = {"type": "function", "function": {"name": "get_weather"}}
        reply = _call(client, s.model_id, tools=[WEATHER], tool_choice=named)
        _check_call(reply.choices[0].message.tool_calls[0], WEATHER)
        fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": TRIP}}
        reply = _call(client, s.model_id, response_format=fmt)
        jsonschema.validate(json.loads(reply.choices[0].message.content), TRIP)
