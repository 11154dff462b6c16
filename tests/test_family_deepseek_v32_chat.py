"""DeepSeek-V3.2's chat encoding and its DSML tool calls.

V3.2 ships no chat template: DeepSeek publishes the encoding as Python
(encoding/encoding_dsv32.py in deepseek-ai/DeepSeek-V3.2), which neither transformers 5.24
nor llama.cpp's source carries. The references here are therefore published renderings:
- DeepSeek's README example, its output string quoted verbatim (PUBLISHED_README_*);
- GOLDEN_* renderings of a tool conversation, written out by hand from the published
  encoding's templates (its TOOLS_SYSTEM_TEMPLATE text, user/assistant/tool templates and
  DSML argument rules), in both thinking modes: the format spec as a golden rendering.
Itamae's template (converters/archs/deepseek_v32_chat.jinja, used when a V3.2 folder has
no template) must render exactly those texts, and the torch engine's prompt for a V3.2
folder without a template must be their token ids, with the request's thinking switch
and tools; an Itamae GGUF carries the template. The calls the encoding writes parse back
with the tools module's parser for that template (DSML), and `reasoning_effort` is the
OpenAI API's thinking switch. Forced DSML calls: tests/test_forced_tool_calls.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

import engine
from app.api.fields import chat_request
from app.api.schema import APIError
from converters import archs
from engine.chat_template import render_chat
from engine.prompting import plan_prompt
from engine.tool_calls import format_for
from engine.tool_calls.deepseek_dsml import DeepSeekDSML
from engine.types import GenerationRequest, Message, ToolCall
from tests.fixtures.deepseek_tokenizer import BOS, grow_vocabulary, write_deepseek_v31_tokenizer
from tests.test_family_deepseek_v31 import TOOLS  # fish_price, the golden's one tool

TEMPLATE = archs.publisher_chat_template("deepseek_v32")

# deepseek-ai/DeepSeek-V3.2, encoding/README.md: its example, thinking mode, and the output
PUBLISHED_README_MESSAGES = [
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "Hello! I am DeepSeek.", "reasoning_content": "thinking..."},
    {"role": "user", "content": "1+1=?"},
]
PUBLISHED_README_OUTPUT = (
    "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek."
    "<｜end▁of▁sentence｜><｜User｜>1+1=?<｜Assistant｜><think>"
)

CALLS = [("fish_price", {"fish": "マグロ", "grams": 200}), ("fish_price", {"fish": "鯛"})]
SYSTEM = "You are a helpful sushi chef."
QUESTION = "How much is 200 g of tuna?"
RESULTS = ['{"yen": 1800}', '{"yen": 900}']

# The published TOOLS_SYSTEM_TEMPLATE with this conversation's one tool in it
GOLDEN_TOOLS_TEXT = """## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<｜DSML｜function_calls>" block like the following as part of your reply to the user:
<｜DSML｜function_calls>
<｜DSML｜invoke name="$FUNCTION_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$FUNCTION_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<｜DSML｜function_calls>
...
</｜DSML｜function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
{"name": "fish_price", "description": "Today's price of a fish at the market.", "parameters": {"type": "object", "properties": {"fish": {"type": "string"}, "grams": {"type": "integer"}}, "required": ["fish"]}}
</functions>
"""
# The assistant's turn as the encoding writes it: content, a blank line, the DSML block
GOLDEN_CALLS = """Checking the market.

<｜DSML｜function_calls>
<｜DSML｜invoke name="fish_price">
<｜DSML｜parameter name="fish" string="true">マグロ</｜DSML｜parameter>
<｜DSML｜parameter name="grams" string="false">200</｜DSML｜parameter>
</｜DSML｜invoke>
<｜DSML｜invoke name="fish_price">
<｜DSML｜parameter name="fish" string="true">鯛</｜DSML｜parameter>
</｜DSML｜invoke>
</｜DSML｜function_calls><｜end▁of▁sentence｜>"""
GOLDEN_RESULTS = """

<function_results>
<result>{"yen": 1800}</result>
<result>{"yen": 900}</result>
</function_results>

"""


def golden(thinking: bool, reasoning: str = "", system: bool = True) -> str:
    """The tool conversation as the encoding renders it, waiting for the reply after the
    results: <think> opens reasoning in thinking mode, </think> closes it in chat mode."""
    head = SYSTEM + "\n\n" + GOLDEN_TOOLS_TEXT if system else "\n\n" + GOLDEN_TOOLS_TEXT
    user = "<｜User｜>" + QUESTION + "<｜Assistant｜>" + ("<think>" if thinking else "</think>")
    reply = (reasoning + "</think>" if thinking else "") + GOLDEN_CALLS
    return BOS + head + user + reply + GOLDEN_RESULTS + ("<think>" if thinking else "</think>")


def conversation(reasoning: str | None = None, system: bool = True) -> list[dict]:
    calls = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in CALLS]
    assistant = {"role": "assistant", "content": "Checking the market.", "tool_calls": calls}
    if reasoning is not None:
        assistant["reasoning_content"] = reasoning
    head = [{"role": "system", "content": SYSTEM}] if system else []
    tools = [{"role": "tool", "content": r} for r in RESULTS]
    return [*head, {"role": "user", "content": QUESTION}, assistant, *tools]


def test_the_published_readme_example_renders_as_published():
    got = render_chat(TEMPLATE, PUBLISHED_README_MESSAGES, bos_token=BOS, thinking=True)
    assert got == PUBLISHED_README_OUTPUT


@pytest.mark.parametrize("system", [True, False], ids=["system", "no-system"])
@pytest.mark.parametrize("thinking", [False, True], ids=["chat", "thinking"])
def test_tool_conversation_renders_as_the_golden(thinking, system):
    reasoning = "The market has today's prices."
    messages = conversation(reasoning, system)
    got = render_chat(TEMPLATE, messages, bos_token=BOS, tools=TOOLS, enable_thinking=thinking)
    assert got == golden(thinking, reasoning if thinking else "", system)


def test_the_encodings_calls_parse_back_to_the_same_calls():
    fmt, native = format_for(TEMPLATE)  # the tools module's parser for this template
    assert isinstance(fmt, DeepSeekDSML) and native
    reply = GOLDEN_CALLS.removesuffix("<｜end▁of▁sentence｜>")  # what the model wrote
    expected = [ToolCall(n, json.dumps(a, ensure_ascii=False)) for n, a in CALLS]
    assert fmt.parse(reply, TOOLS) == ("Checking the market.", expected)
    # the same through Itamae's renderer, with every JSON kind of value
    args = {"fish": "マグロ", "grams": 200, "cuts": ["sashimi", "nigiri"], "fresh": True}
    history = conversation()[:2] + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "fish_price", "arguments": args}}
            ],
        }
    ]
    text = render_chat(TEMPLATE, history, bos_token=BOS, tools=TOOLS)
    written = text.split(QUESTION + "<｜Assistant｜></think>", 1)[1]
    assert fmt.parse(written, TOOLS) == (
        "",
        [ToolCall("fish_price", json.dumps(args, ensure_ascii=False))],
    )
    assert fmt.parse("Today the tuna.", TOOLS) == ("Today the tuna.", [])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """DeepSeek's added tokens; tokenizer_config.json without a template, as V3.2 ships."""
    dest = tmp_path_factory.mktemp("deepseek_v32_tokenizer")
    write_deepseek_v31_tokenizer(dest)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (dest / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return dest


@pytest.fixture(scope="module")
def v32_folder(hf_checkpoint, tokenizer_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("v32_chat") / "deepseek_v32"
    shutil.copytree(hf_checkpoint("deepseek_v32"), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    grow_vocabulary(folder, 1 + max(t["id"] for t in tokenizer["added_tokens"]))
    return folder


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _messages(system: bool = True) -> list[Message]:
    calls = [
        ToolCall(n, json.dumps(a, ensure_ascii=False), f"call_{i}")
        for i, (n, a) in enumerate(CALLS)
    ]
    turns = [
        Message("user", QUESTION),
        Message("assistant", "Checking the market.", tool_calls=calls),
    ]
    turns += [
        Message("tool", r, tool_call_id=f"call_{i}", name="fish_price")
        for i, r in enumerate(RESULTS)
    ]
    return [Message("system", SYSTEM), *turns] if system else turns


@pytest.mark.parametrize("thinking", [None, False, True], ids=["default", "chat", "thinking"])
def test_torch_engine_prompt_is_the_golden_ids(v32_folder, hf_tokenizer, thinking):
    backend = engine.load(v32_folder, engine="torch")
    try:
        req = GenerationRequest(messages=_messages(), tools=TOOLS, enable_thinking=thinking)
        got = backend.generator.prompt_ids(req)
    finally:
        backend.close()
    assert got == hf_tokenizer.encode(golden(bool(thinking)), add_special_tokens=False)
    assert got[-1] == hf_tokenizer.convert_tokens_to_ids("<think>" if thinking else "</think>")


def test_itamae_gguf_carries_the_encoding_as_its_template(v32_folder, tmp_path):
    from gguf import GGUFReader

    from converters.conversion.convert import convert

    out = tmp_path / "v32.gguf"
    convert(v32_folder, out, "F32")
    assert GGUFReader(out).fields["tokenizer.chat_template"].contents() == TEMPLATE


def test_reasoning_effort_is_the_thinking_switch():
    ask = {"messages": [{"role": "user", "content": "Hi"}]}

    def prompt(body: dict) -> str:
        return plan_prompt(TEMPLATE, chat_request(body), bos_token=BOS).text

    default, off = prompt(ask), prompt({**ask, "reasoning_effort": "none"})
    assert off == default  # V3.2's encoding answers without thinking unless asked
    for effort in ("minimal", "low", "medium", "high"):
        on = prompt({**ask, "reasoning_effort": effort})
        assert on != off and on.endswith("<think>")
    with pytest.raises(APIError) as refused:
        chat_request({**ask, "reasoning_effort": "extreme"})
    assert refused.value.status == 400 and "reasoning_effort" in str(refused.value.body())


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "days": {"enum": [1, 2]},
            },
            "required": ["city", "days"],
        },
    },
}


@pytest.mark.parametrize("effort", ["none", "high"])
def test_api_returns_a_forced_v32_call_in_both_modes(v32_folder, effort):
    # `itamae serve` on the V3.2 folder: the call is written in DSML (forced), parsed back
    import jsonschema
    import openai

    from tests.serve_process import ServeProcess

    with ServeProcess("--model", str(v32_folder), "--engine", "torch") as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": "Weather in Tokyo?"}],
            tools=[WEATHER],
            tool_choice="required",
            reasoning_effort=effort,
            temperature=0,
            max_tokens=400,
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("thinking", [False, True], ids=["chat", "thinking"])
def test_a_forced_call_follows_the_closed_reasoning(v32_folder, hf_tokenizer, thinking):
    backend = engine.load(v32_folder, engine="torch")
    try:
        req = GenerationRequest(
            messages=[Message("user", "Weather in Tokyo?")],
            tools=[WEATHER],
            tool_choice="required",
            enable_thinking=thinking,
        )
        prompt = hf_tokenizer.decode(backend.generator.prompt_ids(req))
    finally:
        backend.close()
    opener = "<think></think>" if thinking else "</think>"
    assert prompt.endswith(
        f"Weather in Tokyo?<｜Assistant｜>{opener}\n\n<｜DSML｜function_calls>\n"
        '<｜DSML｜invoke name="'
    )
