"""The Anthropic Messages surface of `itamae serve`, driven by the official `anthropic`
client: messages.create, messages.stream (text and tool use), count_tokens, errors.

The served model is the demo on both local engines; "the right text" is what the OpenAI
surface of the same server answers for the same greedy request.
"""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest

from engine.loader import DEMO_DIR
from tests.serve_process import ServeProcess
from tests.test_api_tools import TRIP, WEATHER

ASK = [{"role": "user", "content": "Hello"}]
# this client version has no temperature argument; the Messages API still takes it
GREEDY = {"temperature": 0}
TOOL = {
    "name": WEATHER["function"]["name"],
    "description": WEATHER["function"]["description"],
    "input_schema": WEATHER["function"]["parameters"],
}
ENGINES = {
    "torch": ("--model", str(DEMO_DIR / "hf"), "--engine", "torch"),
    "llamacpp": ("--model", str(DEMO_DIR / "itamae-demo-Q8_0.gguf"), "--engine", "llamacpp"),
}


@pytest.fixture(scope="module", params=list(ENGINES))
def server(request):
    with ServeProcess(*ENGINES[request.param], api_key="k") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.root, api_key="k", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def openai_reply(server):
    client = openai.OpenAI(base_url=server.url, api_key="k", max_retries=0, timeout=300)
    return client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "system", "content": "Be brief."}, *ASK],
        temperature=0,
        max_tokens=24,
    )


def test_create_gives_the_openai_answer(client, server, openai_reply):
    message = client.messages.create(
        model=server.model_id, system="Be brief.", messages=ASK, max_tokens=24, extra_body=GREEDY
    )
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == openai_reply.choices[0].message.content
    expected = "max_tokens" if openai_reply.choices[0].finish_reason == "length" else "end_turn"
    assert message.stop_reason == expected
    assert message.usage.input_tokens == openai_reply.usage.prompt_tokens
    assert message.usage.output_tokens == openai_reply.usage.completion_tokens


def test_stream_text_assembles_to_the_same_message(client, server, openai_reply):
    with client.messages.stream(
        model=server.model_id, system="Be brief.", messages=ASK, max_tokens=24, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == openai_reply.choices[0].message.content
    assert final.usage.output_tokens == openai_reply.usage.completion_tokens


def test_forced_tool_use_whole_and_streamed(client, server):
    ask = dict(
        model=server.model_id,
        messages=[{"role": "user", "content": "What is the weather in Tokyo?"}],
        max_tokens=80,
        extra_body=GREEDY,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    message = client.messages.create(**ask)
    assert message.stop_reason == "tool_use"
    use = [b for b in message.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.id
    jsonschema.validate(use.input, TOOL["input_schema"])
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"][0]
    assert (streamed.name, streamed.input) == (use.name, use.input)
    # the tool result goes back as a tool_result block
    reply = client.messages.create(
        model=server.model_id,
        max_tokens=8,
        extra_body=GREEDY,
        tools=[TOOL],
        messages=[
            *ask["messages"],
            {"role": "assistant", "content": [b.model_dump() for b in message.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": '{"sky": "clear"}'}
                ],
            },
        ],
    )
    assert reply.usage.input_tokens > message.usage.input_tokens


def test_output_config_json_schema_validates(client, server):
    message = client.messages.create(
        model=server.model_id,
        max_tokens=80,
        messages=[{"role": "user", "content": "Plan a trip to Kyoto."}],
        output_config={"format": {"type": "json_schema", "schema": TRIP}},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), TRIP)


def test_stop_sequences_report_which_one(client, server, openai_reply):
    text = openai_reply.choices[0].message.content
    stop = text.split()[1] if len(text.split()) > 1 else text[1:3]
    message = client.messages.create(
        model=server.model_id,
        system="Be brief.",
        messages=ASK,
        max_tokens=24,
        extra_body=GREEDY,
        stop_sequences=[stop],
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == text[: text.index(stop)]


def test_models_list_names_the_served_model(client, server):
    assert [m.id for m in client.models.list().data] == [server.model_id]


def test_count_tokens_is_the_prompt_length(client, server, openai_reply):
    counted = client.messages.count_tokens(model=server.model_id, system="Be brief.", messages=ASK)
    assert counted.input_tokens == openai_reply.usage.prompt_tokens


def test_errors_in_anthropic_shape(client, server):
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model=server.model_id, messages=ASK, max_tokens=8, extra_body={"top_k": "x"}
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-sonnet-4-5", messages=ASK, max_tokens=8)
    wrong = anthropic.Anthropic(base_url=server.root, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=server.model_id, messages=ASK, max_tokens=8)
