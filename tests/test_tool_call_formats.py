"""Per template family: a tool call rendered by the real chat template parses back to the
same call, and Itamae's renderer writes the same prompt as transformers.

The templates are the copies llama.cpp keeps in models/templates/ of the llama-cpp-python
sdist (tests/fixtures/llamacpp_reference.py fetches it). The reference renderer is
transformers' `apply_chat_template` on a tokenizer built here from the fixtures' BPE
model; the assistant's reply is what the template writes after the generation prompt.
"""

from __future__ import annotations

import json

import pytest

from engine.chat_template import render_chat
from engine.prompting import plan_prompt
from engine.tool_calls import format_for
from engine.types import GenerationRequest, Message
from tests.fixtures.llamacpp_reference import llama_cpp_source

transformers = pytest.importorskip("transformers")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {"name": "get_weather", "arguments": {"city": "東京", "days": 3}}
USER = {"role": "user", "content": "What is the weather in Tokyo?"}
# template file -> the family Itamae must detect
TEMPLATES = {
    "Qwen-Qwen3-0.6B.jinja": "hermes",
    "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "hermes",
    "openai-gpt-oss-120b.jinja": "harmony",
    "deepseek-ai-DeepSeek-V3.1.jinja": "deepseek",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": "deepseek",
    "GLM-4.6.jinja": "glm45",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct.jinja": "llama3",
    "MiniMax-M2.jinja": "minimax_m2",
    "moonshotai-Kimi-K2.jinja": "kimi",
}


@pytest.fixture(scope="module")
def tokenizer():
    from tests.fixtures.tokenizer import train_tokenizer

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(), bos_token="<s>", eos_token="<|im_end|>"
    )


def _template(name: str) -> str:
    return (llama_cpp_source() / "models" / "templates" / name).read_text(encoding="utf-8")


def _assistant_turn(call: dict) -> dict:
    function = {"name": call["name"], "arguments": call["arguments"]}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_0", "type": "function", "function": function}],
    }


def _hf_render(tokenizer, template, messages, generation_prompt):
    return tokenizer.apply_chat_template(
        messages,
        tools=TOOLS,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


def _reply_text(tokenizer, template: str) -> str:
    """What the template writes for the assistant's call, after the generation prompt."""
    prompt = _hf_render(tokenizer, template, [USER], True)
    full = _hf_render(tokenizer, template, [USER, _assistant_turn(CALL)], False)
    shared = 0
    while shared < min(len(prompt), len(full)) and prompt[shared] == full[shared]:
        shared += 1
    return full[shared:]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_call_rendered_by_the_template_parses_back(tokenizer, name):
    template = _template(name)
    fmt, native = format_for(template)
    assert native and fmt.name == TEMPLATES[name]
    reply = _reply_text(tokenizer, template)
    content, calls = fmt.parse(reply, TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        (CALL["name"], CALL["arguments"])
    ], reply
    assert "get_weather" not in content


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_itamae_renders_tool_turns_as_transformers_does(tokenizer, name):
    template = _template(name)
    messages = [
        USER,
        _assistant_turn(CALL),
        {
            "role": "tool",
            "tool_call_id": "call_0",
            "name": "get_weather",
            "content": '{"sky": "clear"}',
        },
    ]
    expected = _hf_render(tokenizer, template, messages, True)
    ours = render_chat(
        template,
        messages,
        tools=TOOLS,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
    )
    assert ours == expected


def _tool(name: str, properties: dict) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


SPECIAL = _tool("special_function", {"arg1": {"type": "integer"}})
GET_TIME = _tool("get_time", {"city": {"type": "string"}})
MAGIC_INT = _tool("magic_int", {"ref": {"type": "integer"}})
EMPTY = _tool("empty_args", {})
# Model outputs and the calls llama.cpp's parsers read from them, copied from llama.cpp's
# tests/test-chat.cpp (llama-cpp-python 0.3.36's vendor copy; line numbers there).
LLAMACPP_CASES = [
    (
        "openai-gpt-oss-120b.jinja",  # 6457
        ' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}',
        [SPECIAL],
        [("special_function", {"arg1": 1})],
    ),
    (
        "openai-gpt-oss-120b.jinja",  # 6464
        '<|channel|>analysis to=functions.special_function<|message|>{"arg1": 1}',
        [SPECIAL],
        [("special_function", {"arg1": 1})],
    ),
    (
        "openai-gpt-oss-120b.jinja",  # 6471
        ' to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{"arg1": 1}',
        [SPECIAL],
        [("special_function", {"arg1": 1})],
    ),
    (
        "openai-gpt-oss-120b.jinja",  # 6487
        "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant to=functions."
        'special_function<|channel|>analysis<|message|>{"arg1": 1}',
        [SPECIAL],
        [("special_function", {"arg1": 1})],
    ),
    (
        "openai-gpt-oss-120b.jinja",  # 6443: reasoning, then the answer on the final channel
        "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final"
        "<|message|>Hello, world!\nWhat's up?",
        [SPECIAL],
        [],
    ),
    (
        "GLM-4.6.jinja",  # 4756
        "</think>\n<tool_call>get_time<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>",
        [GET_TIME],
        [("get_time", {"city": "Paris"})],
    ),
    (
        "GLM-4.6.jinja",  # 4784
        "</think>\n<tool_call>magic_int\n<arg_key>ref</arg_key>\n<arg_value>42</arg_value>\n</tool_call>",
        [MAGIC_INT],
        [("magic_int", {"ref": 42})],
    ),
    (
        "MiniMax-M2.jinja",  # 5447
        'Let\'s call a tool:\n</think>\n\n<minimax:tool_call>\n<invoke name="empty_args">\n'
        "</invoke>\n</minimax:tool_call>",
        [EMPTY],
        [("empty_args", {})],
    ),
    (
        "MiniMax-M2.jinja",  # 5455
        '\n</think>\n\n<minimax:tool_call>\n<invoke name="special_function">\n<parameter '
        'name="arg1">1</parameter>\n</invoke>\n</minimax:tool_call>',
        [SPECIAL],
        [("special_function", {"arg1": 1})],
    ),
    (
        "deepseek-ai-DeepSeek-V3.1.jinja",  # 3921
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": '
        '"XYZCITY"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        [GET_TIME],
        [("get_time", {"city": "XYZCITY"})],
    ),
    (
        "moonshotai-Kimi-K2.jinja",  # 4975
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_function:0"
        '<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|><|tool_calls_section_end|>',
        [SPECIAL],
        [("special_function", {"arg1": 1})],
    ),
    (
        "Qwen-Qwen3-0.6B.jinja",  # 5328
        "I'm\nthinking\n</think>\n\n<tool_call>\n"
        '{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>',
        [SPECIAL],
        [("special_function", {"arg1": 1})],
    ),
]


@pytest.mark.parametrize("case", LLAMACPP_CASES, ids=lambda c: c[0])
def test_model_outputs_parse_as_llama_cpp_reads_them(case):
    name, output, tools, expected = case
    fmt, _ = format_for(_template(name))
    content, calls = fmt.parse(output, tools)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == expected
    if not expected:
        assert content == "Hello, world!\nWhat's up?"


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_tool_calls_false_keeps_the_first_call(parallel):
    request = GenerationRequest(
        messages=[Message("user", "Weather in Tokyo and Osaka?")],
        tools=[GET_TIME],
        parallel_tool_calls=parallel,
    )
    plan = plan_prompt(_template("Qwen-Qwen3-0.6B.jinja"), request)
    two = "".join(
        f'<tool_call>\n{{"name": "get_time", "arguments": {{"city": "{c}"}}}}\n</tool_call>'
        for c in ("Tokyo", "Osaka")
    )
    _, calls = plan.read_reply(two)
    assert [json.loads(c.arguments)["city"] for c in calls] == (
        ["Tokyo", "Osaka"] if parallel else ["Tokyo"]
    )


@pytest.mark.parametrize("enable", [None, True, False])
def test_enable_thinking_reaches_the_template(tokenizer, enable):
    """Qwen3's template writes an empty think block when thinking is off, as
    transformers renders it with enable_thinking=False."""
    template = _template("Qwen-Qwen3-0.6B.jinja")
    request = GenerationRequest(messages=[Message("user", "Hi")], enable_thinking=enable)
    extra = {} if enable is None else {"enable_thinking": enable}
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
        **extra,
    )
    ours = plan_prompt(template, request, tokenizer.bos_token, tokenizer.eos_token).text
    assert ours == expected
    assert ours.endswith("<think>\n\n</think>\n\n") == (enable is False)
