"""DeepSeek-V4's chat encoding and its DSML tool calls.

V4 ships no chat template: DeepSeek publishes the encoding as Python (encoding/
encoding_dsv4.py in deepseek-ai/DeepSeek-V4-Flash and -Pro), with golden renderings of its
own (encoding/tests/test_output_N.txt); neither transformers 5.24 nor llama.cpp's source
carries it. The references here are therefore published renderings:
- PUBLISHED_THINKING_TOOLS and PUBLISHED_THINKING: test_output_1.txt (thinking mode, tools,
  a call and its result) and test_output_2.txt (thinking mode, earlier reasoning dropped), as
  ms-swift's alignment test (tests/test_align/test_template/test_deepseek_v4_flash.py) quotes
  them byte for byte from the model repository, the tools section included;
- renderings of what the published encoding's rules write where no golden file shows it
  (chat mode, tools without a system message, several results in one turn), and
  llama.cpp's own V4 templates (models/templates/), which render the goldens too.
Itamae's template (converters/archs/deepseek_v4_chat.jinja, used when a V4 folder has no
template) must render exactly those texts, and the torch engine's prompt for a V4 folder
without a template must be their token ids, with the request's thinking switch and tools;
an Itamae GGUF carries the template. The calls the encoding writes parse back with the
tools module's parser for that template (DSML in a `tool_calls` block), a forced call
opens that block (through the API too), `reasoning_effort` is the thinking switch, and a
three-turn chat under the encoding equals the recomputed conversation in both modes.
"""

from __future__ import annotations

import json

import pytest

import engine
from app.api.fields import chat_request
from converters import archs
from engine.chat_template import render_chat
from engine.prompting import plan_prompt
from engine.tool_calls import format_for
from engine.tool_calls.deepseek_dsml import DeepSeekDSML, DeepSeekV4DSML
from engine.types import GenerationRequest, Message, ToolCall
from tests.fixtures import deepseek_v4
from tests.fixtures.checkpoints import SEED
from tests.fixtures.deepseek_tokenizer import BOS, EOS, write_deepseek_v31_tokenizer

TEMPLATE = archs.publisher_chat_template("deepseek_v4")
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SYSTEM = "You are a helpful assistant."

# test_input_1.json's two tools
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a specific location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city name"},
                    "unit": {
                        "type": "string",
                        "enum": ["celsius", "fahrenheit"],
                        "description": "Temperature unit",
                    },
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web for information",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Search query"},
                    "num_results": {
                        "type": "integer",
                        "description": "Number of results to return",
                    },
                },
                "required": ["query"],
            },
        },
    },
]
# The published TOOLS_TEMPLATE with those tools in it
TOOLS_SECTION = (
    "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can"
    ' invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:\n\n'
    "<｜DSML｜tool_calls>\n"
    '<｜DSML｜invoke name="$TOOL_NAME">\n'
    '<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE'
    "</｜DSML｜parameter>\n...\n</｜DSML｜invoke>\n"
    '<｜DSML｜invoke name="$TOOL_NAME2">\n...\n</｜DSML｜invoke>\n'
    "</｜DSML｜tool_calls>\n\n"
    'String parameters should be specified as is and set `string="true"`. For all other types'
    " (numbers, booleans, arrays, objects), pass the value in JSON format and set"
    ' `string="false"`.\n\n'
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete"
    " reasoning inside <think>...</think> BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n"
    '{"name": "get_weather", "description": "Get the weather for a specific location", '
    '"parameters": {"type": "object", "properties": {"location": {"type": "string", '
    '"description": "The city name"}, "unit": {"type": "string", "enum": ["celsius", '
    '"fahrenheit"], "description": "Temperature unit"}}, "required": ["location"]}}\n'
    '{"name": "search", "description": "Search the web for information", "parameters": '
    '{"type": "object", "properties": {"query": {"type": "string", "description": '
    '"Search query"}, "num_results": {"type": "integer", "description": '
    '"Number of results to return"}}, "required": ["query"]}}\n\n'
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke"
    " tool calls.\n"
)
QUESTION = "What's the weather in Beijing?"
CALL_ARGS = {"location": "Beijing", "unit": "celsius"}
RESULT = '{"temperature": 22, "condition": "sunny", "humidity": 45}'
ANSWER = "The weather in Beijing is currently sunny with a temperature of 22°C and 45% humidity."
CALLS_BLOCK = (
    "\n\n<｜DSML｜tool_calls>\n"
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="location" string="true">Beijing</｜DSML｜parameter>\n'
    '<｜DSML｜parameter name="unit" string="true">celsius</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>"
)
# encoding/tests/test_output_1.txt
PUBLISHED_THINKING_TOOLS = (
    f"{BOS}{SYSTEM}\n\n{TOOLS_SECTION}{USER}{QUESTION}{ASSISTANT}<think>The user wants to know"
    f" the weather in Beijing. I should use the get_weather tool.</think>{CALLS_BLOCK}{EOS}"
    f"{USER}<tool_result>{RESULT}</tool_result>{ASSISTANT}<think>Got the weather data. Let me"
    f" format a nice response.</think>{ANSWER}{EOS}"
)
# encoding/tests/test_output_2.txt
PUBLISHED_THINKING = (
    f"{BOS}{SYSTEM}{USER}Hello{ASSISTANT}</think>Hi there! How can I help you?{EOS}"
    f"{USER}What is the capital of France?{ASSISTANT}<think>The user asks about the capital of"
    f" France. It is Paris.</think>The capital of France is Paris.{EOS}"
)


def tool_conversation(with_system: bool = True) -> list[dict]:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}
    reasoning = "The user wants to know the weather in Beijing. I should use the get_weather tool."
    return [
        *([{"role": "system", "content": SYSTEM}] if with_system else []),
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "reasoning_content": reasoning, "tool_calls": [call]},
        {"role": "tool", "content": RESULT},
        {
            "role": "assistant",
            "content": ANSWER,
            "reasoning_content": "Got the weather data. Let me format a nice response.",
        },
    ]


CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hello"},
    {
        "role": "assistant",
        "content": "Hi there! How can I help you?",
        "reasoning_content": "The user said hello, I should greet back.",
    },
    {"role": "user", "content": "What is the capital of France?"},
    {
        "role": "assistant",
        "content": "The capital of France is Paris.",
        "reasoning_content": "The user asks about the capital of France. It is Paris.",
    },
]


def test_the_published_goldens_render_as_published():
    got = render_chat(TEMPLATE, tool_conversation(), bos_token=BOS, tools=TOOLS, thinking=True)
    assert got == PUBLISHED_THINKING_TOOLS
    assert render_chat(TEMPLATE, CHAT, bos_token=BOS, thinking=True) == PUBLISHED_THINKING
    assert "The user said hello" not in PUBLISHED_THINKING  # earlier reasoning dropped


def test_generation_prompts_open_or_close_the_reasoning():
    # the last user turn opens the reply: <think> in thinking mode, </think> in chat mode
    head = f"{BOS}{SYSTEM}{USER}Hello{ASSISTANT}</think>Hi there! How can I help you?{EOS}"
    last = f"{USER}What is the capital of France?{ASSISTANT}"
    for switch in ("thinking", "enable_thinking"):
        assert render_chat(TEMPLATE, CHAT[:-1], bos_token=BOS, **{switch: True}) == (
            head + last + "<think>"
        )
    assert render_chat(TEMPLATE, CHAT[:-1], bos_token=BOS) == head + last + "</think>"
    # chat mode (the default) keeps no reasoning, even after the last user turn
    assert render_chat(TEMPLATE, CHAT, bos_token=BOS, thinking=False) == (
        head + last + f"</think>The capital of France is Paris.{EOS}"
    )


def test_tools_without_a_system_message_and_in_chat_mode():
    # the tools text opens the prompt (an empty system message, as vLLM's V4 tokenizer
    # inserts one); chat mode closes every reply's reasoning and writes none
    got = render_chat(TEMPLATE, tool_conversation(False), bos_token=BOS, tools=TOOLS)
    assert got == (
        f"{BOS}\n\n{TOOLS_SECTION}{USER}{QUESTION}{ASSISTANT}</think>{CALLS_BLOCK}{EOS}"
        f"{USER}<tool_result>{RESULT}</tool_result>{ASSISTANT}</think>{ANSWER}{EOS}"
    )


def test_results_and_a_user_message_after_them_are_one_user_turn():
    # the encoding has no tool role: a run of results and user text is one user turn
    messages = tool_conversation()[:4] + [
        {"role": "tool", "content": '{"temperature": 26}'},
        {"role": "user", "content": "And Shanghai?"},
    ]
    got = render_chat(TEMPLATE, messages, bos_token=BOS, tools=TOOLS, thinking=True)
    assert got.endswith(
        f"{EOS}{USER}<tool_result>{RESULT}</tool_result>\n\n<tool_result>"
        '{"temperature": 26}</tool_result>\n\nAnd Shanghai?' + ASSISTANT + "<think>"
    )


LLAMA_CPP_V4 = ["deepseek-ai-DeepSeek-V4.jinja", "deepseek-ai-DeepSeek-V4-Flash-0731.jinja"]


@pytest.mark.parametrize("name", LLAMA_CPP_V4)
def test_llama_cpps_own_v4_templates_agree(name):
    # llama.cpp's renderings of the same encoding (models/templates/ in its source tree):
    # they give the published goldens too, and Itamae's text wherever a system message
    # carries the tools and tools are given whenever results are. (Where those do not hold
    # they depart from the encoding: tools text with no system message, which vLLM's V4
    # tokenizer puts after an empty one, and reasoning kept for results without tools.)
    from tests.fixtures.llamacpp_reference import llama_cpp_source

    theirs = (llama_cpp_source() / "models" / "templates" / name).read_text(encoding="utf-8")
    assert isinstance(format_for(theirs)[0], DeepSeekV4DSML)  # its calls read back as V4's
    kw = {"bos_token": BOS, "add_generation_prompt": False, "thinking": True}
    assert render_chat(theirs, tool_conversation(), tools=TOOLS, **kw) == PUBLISHED_THINKING_TOOLS
    assert render_chat(theirs, CHAT, **kw) == PUBLISHED_THINKING
    merged = tool_conversation()[:4] + [
        {"role": "tool", "content": '{"temperature": 26}'},
        {"role": "user", "content": "And Shanghai?"},
    ]
    for messages, tools in [(CHAT, []), (CHAT[:-1], []), (CHAT[:-1], TOOLS), (merged, TOOLS)]:
        for thinking in (False, True):
            ours = render_chat(TEMPLATE, messages, bos_token=BOS, tools=tools, thinking=thinking)
            generation = messages[-1]["role"] != "assistant"
            assert ours == render_chat(
                theirs,
                messages,
                bos_token=BOS,
                tools=tools,
                thinking=thinking,
                add_generation_prompt=generation,
            )


def test_the_encodings_calls_parse_back_to_the_same_calls():
    fmt, native = format_for(TEMPLATE)  # the tools module's parser for this template
    assert isinstance(fmt, DeepSeekV4DSML) and native
    reply = CALLS_BLOCK  # what the model wrote after its reasoning
    assert fmt.parse(reply, TOOLS) == ("", [ToolCall("get_weather", json.dumps(CALL_ARGS))])
    # every JSON kind of value, through Itamae's renderer, after some content
    args = {"query": "寿司", "num_results": 3, "sites": ["a", "b"], "fresh": True}
    call = {"type": "function", "function": {"name": "search", "arguments": args}}
    history = [
        {"role": "user", "content": "Find sushi."},
        {"role": "assistant", "content": "Searching.", "tool_calls": [call, call]},
    ]
    text = render_chat(TEMPLATE, history, bos_token=BOS, tools=TOOLS)
    written = text.split(f"Find sushi.{ASSISTANT}</think>", 1)[1].removesuffix(EOS)
    expected = ToolCall("search", json.dumps(args, ensure_ascii=False))
    assert fmt.parse(written, TOOLS) == ("Searching.", [expected, expected])
    assert fmt.parse("Today the tuna.", TOOLS) == ("Today the tuna.", [])


def test_v32s_template_keeps_its_own_parser():
    fmt, _ = format_for(archs.publisher_chat_template("deepseek_v32"))
    assert type(fmt) is DeepSeekDSML
    # V3.2's block is not V4's: each parser reads only its own
    v32_reply = CALLS_BLOCK.replace("tool_calls>", "function_calls>")
    assert DeepSeekV4DSML().parse(v32_reply, TOOLS)[1] == []
    assert DeepSeekDSML().parse(v32_reply, TOOLS)[1] == [
        ToolCall("get_weather", json.dumps(CALL_ARGS))
    ]


@pytest.mark.parametrize("thinking", [False, True], ids=["chat", "thinking"])
def test_a_forced_call_opens_the_tool_calls_block(thinking):
    req = GenerationRequest(
        messages=[Message("user", QUESTION)],
        tools=TOOLS,
        tool_choice="function",
        tool_name="get_weather",
        enable_thinking=thinking,
    )
    plan = plan_prompt(TEMPLATE, req, bos_token=BOS)
    opener = "<think></think>" if thinking else "</think>"  # reasoning closed before a call
    assert plan.text.endswith(
        f'{QUESTION}{ASSISTANT}{opener}\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="'
    )
    # what constrained decoding then writes closes V4's block, and parses back
    texts = [part[1] for part in plan.constraint.sequences[0] if part[0] == "text"]
    assert texts[0] == 'get_weather">\n' and texts[-1].endswith("</｜DSML｜tool_calls>")
    written = plan.prefix + texts[0] + texts[1] + "Beijing" + "".join(texts[2:])
    call = ToolCall("get_weather", json.dumps({"location": "Beijing"}), "call_0")
    assert plan.read_reply(written) == ("", [call])


def test_reasoning_effort_is_the_thinking_switch():
    ask = {"messages": [{"role": "user", "content": "Hi"}]}

    def prompt(body: dict) -> str:
        return plan_prompt(TEMPLATE, chat_request(body), bos_token=BOS).text

    default, off = prompt(ask), prompt({**ask, "reasoning_effort": "none"})
    assert off == default == f"{BOS}{USER}Hi{ASSISTANT}</think>"
    for effort in ("minimal", "low", "medium", "high"):
        assert prompt({**ask, "reasoning_effort": effort}) == f"{BOS}{USER}Hi{ASSISTANT}<think>"


@pytest.fixture(scope="module")
def v4_folder(tmp_path_factory):
    """The tiny V4 (tests/fixtures/deepseek_v4.py) with DeepSeek's added tokens in its
    vocabulary and tokenizer_config.json without a template, as V4 ships."""
    folder = tmp_path_factory.mktemp("v4_chat")
    ids = write_deepseek_v31_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    special = {"vocab_size": 1 + max(ids.values()), "bos": ids[BOS], "eos": ids[EOS]}
    deepseek_v4.build(folder, special, SEED)
    return folder


@pytest.fixture(scope="module")
def hf_tokenizer(v4_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(v4_folder)


def _messages() -> list[Message]:
    call = ToolCall("get_weather", json.dumps(CALL_ARGS), "call_0")
    return [
        Message("system", SYSTEM),
        Message("user", QUESTION),
        Message("assistant", "", tool_calls=[call]),
        Message("tool", RESULT, tool_call_id="call_0", name="get_weather"),
    ]


@pytest.mark.parametrize("thinking", [None, False, True], ids=["default", "chat", "thinking"])
def test_torch_engine_prompt_is_the_encodings_ids(v4_folder, hf_tokenizer, thinking):
    backend = engine.load(v4_folder, engine="torch")
    try:
        req = GenerationRequest(messages=_messages(), tools=TOOLS, enable_thinking=thinking)
        got = backend.generator.prompt_ids(req)
    finally:
        backend.close()
    # the published golden up to the reply after the result (no reasoning was kept in
    # Itamae's history, so the first reply's thinking block is empty)
    opener = "<think>" if thinking else "</think>"
    reasoning = "</think>" if thinking else ""
    want = (
        f"{BOS}{SYSTEM}\n\n{TOOLS_SECTION}{USER}{QUESTION}{ASSISTANT}{opener}{reasoning}"
        f"{CALLS_BLOCK}{EOS}{USER}<tool_result>{RESULT}</tool_result>{ASSISTANT}{opener}"
    )
    assert got == hf_tokenizer.encode(want, add_special_tokens=False)
    assert got[-1] == hf_tokenizer.convert_tokens_to_ids(opener)


@pytest.mark.slow  # ~45 s each on the shared 2-core machine
@pytest.mark.parametrize("thinking", [False, True], ids=["chat", "thinking"])
def test_three_turn_chat_under_the_encoding_equals_the_recomputed_conversation(v4_folder, thinking):
    # in thinking mode a new user turn rewrites the last one's opener (<think> becomes
    # </think>, its reasoning dropped), before the only checkpoint V4's cache keeps (the
    # last turn's end): the turn is recomputed, and must still be exact
    from tests.chat_turns import assert_turns_reuse_exactly

    backend = engine.load(v4_folder, engine="torch", dtype="float32")
    try:
        ids = assert_turns_reuse_exactly(backend, reuses=not thinking, enable_thinking=thinking)
        opener = "<think>" if thinking else "</think>"
        assert ids[-1] == backend.generator.text.tokenizer.token_to_id(opener)
    finally:
        backend.close()


def test_itamae_gguf_carries_the_encoding_as_its_template(v4_folder, tmp_path):
    from gguf import GGUFReader

    from converters.conversion.convert import convert

    out = tmp_path / "v4.gguf"
    convert(v4_folder, out, "F32")
    assert GGUFReader(out).fields["tokenizer.chat_template"].contents() == TEMPLATE


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "maxLength": 8},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
        },
    },
}


@pytest.mark.slow  # two server starts on the V4 fixture
@pytest.mark.parametrize("effort", ["none", "high"])
def test_api_returns_a_forced_v4_call_in_both_modes(v4_folder, effort):
    # `itamae serve` on the V4 folder: the call is written in V4's DSML block (forced),
    # parsed back; in thinking mode the reasoning is closed before it
    import jsonschema
    import openai

    from tests.serve_process import ServeProcess

    with ServeProcess("--model", str(v4_folder), "--engine", "torch") as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": QUESTION}],
            tools=[WEATHER],
            tool_choice="required",
            reasoning_effort=effort,
            temperature=0,
            max_tokens=200,
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
