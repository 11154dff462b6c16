"""Reasoning through the API: the thinking switch and effort reach the real chat templates,
and a reasoning model's thoughts come back apart from its answer.

- `reasoning_switches` on the templates as their publishers ship them (llama.cpp keeps
  copies in models/templates): gpt-oss reads `reasoning_effort` and cannot stop reasoning,
  DeepSeek-V3.1 and Qwen3 have an on/off switch, the demo's template has none.
- The streaming split (engine.reasoning.ReasoningStream) gives, for any cut of a reply into
  pieces, exactly what splitting the whole reply gives.
- The official `openai` client against `itamae serve` with the gpt-oss fixture steered to
  think (tests/fixtures/harmony_steer.py): `reasoning_content` holds the analysis channel,
  `content` never a Harmony token, streamed and whole alike; `reasoning_effort` reaches
  the prompt, a setting the template cannot honour is a 400 naming the field.
"""

from __future__ import annotations

import json
import random
import threading

import openai
import pytest

from app.chat_reply import REASONING_CHOICES, ChatParams
from engine.chat_template import template_variables
from engine.loader import DEMO_DIR
from engine.prompting import ReasoningSwitchError, plan_prompt
from engine.reasoning import ReasoningStream, split_reasoning
from engine.types import GenerationRequest, Message
from tests.fixtures.harmony_steer import STEERED_THOUGHT, steer_to_analysis
from tests.serve_process import ServeProcess
from tests.test_family_chat_templates import template

CHAT = [Message("user", "Which fish is in season?")]


def prompt(name: str, **fields) -> str:
    return plan_prompt(template(name), GenerationRequest(messages=CHAT, **fields)).text


def test_gpt_oss_reads_the_effort_and_cannot_stop_reasoning():
    assert "Reasoning: medium" in prompt("openai-gpt-oss-120b")  # the template's default
    assert "Reasoning: high" in prompt("openai-gpt-oss-120b", reasoning_effort="high")
    # thinking on is what it does anyway; off is refused with the way that works
    assert prompt("openai-gpt-oss-120b", enable_thinking=True) == prompt("openai-gpt-oss-120b")
    with pytest.raises(ReasoningSwitchError, match="reasoning_effort 'low'"):
        prompt("openai-gpt-oss-120b", enable_thinking=False)


@pytest.mark.parametrize("name", ["deepseek-ai-DeepSeek-V3.1", "Qwen-Qwen3-0.6B"])
def test_an_effort_turns_a_thinking_switch_on(name):
    on, off = prompt(name, enable_thinking=True), prompt(name, enable_thinking=False)
    assert on != off
    assert prompt(name, reasoning_effort="low") == on


def test_v31_thinking_mode_opens_the_reasoning_block_in_the_prompt():
    v31 = template("deepseek-ai-DeepSeek-V3.1")
    on = plan_prompt(v31, GenerationRequest(messages=CHAT, enable_thinking=True))
    off = plan_prompt(v31, GenerationRequest(messages=CHAT, enable_thinking=False))
    assert on.text.endswith("<think>") and on.opens_reasoning
    assert off.text.endswith("<think></think>") and not off.opens_reasoning


def test_a_template_without_a_switch_refuses_the_setting():
    demo = json.loads((DEMO_DIR / "hf" / "tokenizer_config.json").read_text())["chat_template"]
    assert not {"enable_thinking", "thinking", "reasoning_effort"} & template_variables(demo)
    for fields in ({"enable_thinking": False}, {"reasoning_effort": "high"}):
        with pytest.raises(ReasoningSwitchError):
            plan_prompt(demo, GenerationRequest(messages=CHAT, **fields))
    plan_prompt(demo, GenerationRequest(messages=CHAT))  # no setting: nothing to refuse


REPLIES = [
    (False, "<think>The tuna came this morning.</think>\n\nTuna, then."),
    (True, "The tuna came this morning.\n</think>\n\nTuna, then."),  # V3.1 / R1: opened
    (True, "Still thinking about the ta"),  # cut off while reasoning
    (False, "<|channel|>analysis<|message|>Tuna is fresh.<|end|><|start|>assistant"
            "<|channel|>final<|message|>Tuna today.<|return|>"),
    (False, "Plain answer, no reasoning: 3 < 4 and x</thi"),
    (False, "a <"),
]  # fmt: skip


@pytest.mark.parametrize("opened,reply", REPLIES)
def test_any_cut_of_a_stream_splits_as_the_whole_reply(opened, reply):
    whole = split_reasoning(reply, opened)
    rng = random.Random(reply)
    for _ in range(25):
        cuts = sorted(rng.sample(range(1, len(reply)), rng.randint(1, min(12, len(reply) - 1))))
        pieces = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)], strict=True)]
        stream = ReasoningStream(opened)
        got = [stream.feed(piece) for piece in pieces] + [stream.flush()]
        thinking = "".join(t for t, _ in got)
        answer = "".join(a for _, a in got)
        assert thinking == (whole.thinking or "")
        assert answer == (whole.answer if whole.thinking is not None or whole.answer else reply)
        assert "<|" not in answer or "<|" not in reply.split("<|message|>")[-1]


@pytest.fixture(scope="module")
def server(hf_checkpoint, tmp_path_factory):
    folder = steer_to_analysis(hf_checkpoint("gpt_oss"), tmp_path_factory.mktemp("r") / "thinks")
    with ServeProcess("--model", str(folder), "--engine", "torch") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)


def ask(client, server, **extra):
    return client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=24,
        temperature=0,
        **extra,
    )


def test_the_analysis_channel_is_reasoning_content_not_content(client, server):
    message = ask(client, server).choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert STEERED_THOUGHT.strip() in reasoning
    assert "<|" not in reasoning and "<|" not in (message.content or "")
    assert message.content == ""  # the steered model never reaches the final channel


def test_streamed_reasoning_equals_the_whole_reply(client, server):
    whole = ask(client, server).choices[0].message
    chunks = list(ask(client, server, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert reasoning == whole.model_extra["reasoning_content"]
    assert content == whole.content


def test_reasoning_effort_reaches_the_template_and_none_is_refused(client, server):
    assert ask(client, server, reasoning_effort="high").choices[0].message is not None
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, server, reasoning_effort="none")
    assert refused.value.body["param"] == "reasoning_effort"
    assert "reasoning_effort 'low'" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        ask(client, server, reasoning_effort="extreme")
    assert bad.value.body["param"] == "reasoning_effort"


@pytest.mark.parametrize("choice", REASONING_CHOICES)
def test_the_chat_tabs_reasoning_choice_reaches_the_template(choice):
    req = ChatParams("", 0.0, 1.0, 0, 0.0, 1.0, 16, -1, 0, reasoning=choice).request(CHAT)
    qwen = plan_prompt(template("Qwen-Qwen3-0.6B"), req).text
    if choice == "off":
        assert qwen == prompt("Qwen-Qwen3-0.6B", enable_thinking=False)
        with pytest.raises(ReasoningSwitchError):
            plan_prompt(template("openai-gpt-oss-120b"), req)
        return
    gpt_oss = plan_prompt(template("openai-gpt-oss-120b"), req).text
    level = "medium" if choice == "default" else choice
    assert f"Reasoning: {level}" in gpt_oss
    expected = {} if choice == "default" else {"enable_thinking": True}
    assert qwen == prompt("Qwen-Qwen3-0.6B", **expected)



def test_the_remote_backend_keeps_a_servers_reasoning(server):
    """Another Itamae (or llama.cpp's server, DeepSeek's API) sends the reasoning beside
    the answer as `reasoning_content`; the remote backend reads it back between <think>
    tags, so it splits into the same two parts. Each answer is one real response of the
    server, read by the remote backend and by hand (the steered fixture's greedy chain is
    too close a call in bf16 for two requests to be compared token for token)."""
    import time

    import httpx

    import engine
    from engine.remote.sse import read_stream, read_whole
    from engine.types import SamplingParams, TokenEvent

    def text_of(events) -> str:
        return "".join(e.text for e in events if isinstance(e, TokenEvent))

    remote = engine.load(server.url)
    try:
        req = GenerationRequest(
            messages=[Message("user", "Hi")],
            sampling=SamplingParams(temperature=0.0, max_tokens=24),
        )
        body = remote._body(req, chat=True)
        streamed = remote.stream(req)
        assert split_reasoning(text_of(streamed)).thinking  # through the whole backend
    finally:
        remote.close()
    url = server.url + "/chat/completions"
    raw = httpx.post(url, json=body, timeout=120).content  # the server's SSE bytes
    chunks = [json.loads(line[5:]) for line in raw.decode().splitlines()
              if line.startswith("data: {")]  # fmt: skip
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning
    replay = httpx.Response(200, content=raw)
    parts = split_reasoning(text_of(read_stream(replay, True, threading.Event(), 0.0)))
    assert (parts.thinking, parts.answer) == (reasoning.strip(), content)

    whole = httpx.post(url, json={**body, "stream": False}, timeout=120).json()
    message = whole["choices"][0]["message"]
    parts = split_reasoning(text_of(read_whole(whole, True, time.perf_counter())))
    assert (parts.thinking, parts.answer) == (message["reasoning_content"].strip(),
                                              message["content"] or "")  # fmt: skip


def test_ollamas_think_streams_thinking_apart_as_it_comes(server):
    """The official `ollama` client with `think`: streamed chunks carry message.thinking
    and message.content apart, piece by piece, joining to the whole reply's split."""
    import ollama

    client = ollama.Client(host=server.url.removesuffix("/v1"))
    name = client.list().models[0].model
    turn = [{"role": "user", "content": "Hi"}]
    options = {"temperature": 0, "num_predict": 24}
    whole = client.chat(model=name, messages=turn, think=True, options=options).message
    assert STEERED_THOUGHT.strip() in whole.thinking and "<|" not in whole.thinking
    chunks = list(client.chat(model=name, messages=turn, think=True, options=options, stream=True))
    thoughts = [c.message.thinking for c in chunks if c.message.thinking]
    assert len(thoughts) > 3  # streamed as it came, not held to the end
    assert "".join(thoughts) == whole.thinking
    assert "".join(c.message.content or "" for c in chunks) == whole.content
    generated = list(client.generate(model=name, prompt="Hi", think=True, options=options,
                                     stream=True))  # fmt: skip
    assert sum(1 for g in generated if g.thinking) > 3
    assert "<|" not in "".join(g.response or "" for g in generated)
