"""DeepSeek-V3.1's and V3.2's tool calls read back out of a reply.

The V3.1 template (deepseek-ai/DeepSeek-V3.1's tokenizer_config.json; llama.cpp's copy in
models/templates/deepseek-ai-DeepSeek-V3.1.jinja) writes an assistant's calls after its
content as

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGUMENTS<｜tool▁call▁end｜>...
    <｜tool▁calls▁end｜>

with ARGUMENTS passed through `tojson`: a JSON object when the history held the arguments
as a mapping (transformers' convention), a JSON string holding that object when it held
OpenAI's argument text. Unlike V3/R1 there is no `function` type and no ```json fence.
llama.cpp reads the same markers (common/chat-diff-analyzer.cpp).

V3.2's template (models/templates/deepseek-ai-DeepSeek-V3.2.jinja) writes DSML instead:

    <｜DSML｜function_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="KEY" string="true">text</｜DSML｜parameter>
    <｜DSML｜parameter name="KEY" string="false">JSON</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>
"""

from __future__ import annotations

import json
import re

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
_CALL = re.compile(r"<｜tool▁call▁begin｜>(.+?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", re.DOTALL)
END_OF_SENTENCE = "<｜end▁of▁sentence｜>"
DSML_CALLS = "<｜DSML｜function_calls>"
_INVOKE = re.compile(r'<｜DSML｜invoke name="([^"]+)">\n?(.*?)</｜DSML｜invoke>', re.DOTALL)
_PARAMETER = re.compile(
    r'<｜DSML｜parameter name="([^"]+)" string="(true|false)">(.*?)</｜DSML｜parameter>', re.DOTALL
)


def parse_tool_calls(reply: str) -> tuple[str, list[dict]]:
    """(the reply's content, its calls as OpenAI-style
    {"type": "function", "function": {"name", "arguments"}} with arguments a mapping).
    A reply without the calls block is all content."""
    reply = reply.removesuffix(END_OF_SENTENCE)
    start = reply.find(CALLS_BEGIN)
    if start < 0:
        return reply, []
    block = reply[start + len(CALLS_BEGIN) :]
    block = block.split(CALLS_END, 1)[0]
    calls = [
        {"type": "function", "function": {"name": name.strip(), "arguments": _arguments(text)}}
        for name, text in _CALL.findall(block)
    ]
    return reply[:start], calls


def _arguments(text: str) -> dict | str:
    """The call's arguments as a mapping; text that is not JSON stays text, so the caller
    sees what the model wrote rather than losing the call."""
    try:
        value = json.loads(text)
        if isinstance(value, str):  # tojson of OpenAI's argument text: JSON inside a string
            value = json.loads(value)
    except json.JSONDecodeError:
        return text
    return value


def parse_dsml_tool_calls(reply: str) -> tuple[str, list[dict]]:
    """V3.2's calls, in the shape `parse_tool_calls` gives: (content, calls)."""
    reply = reply.removesuffix(END_OF_SENTENCE)
    start = reply.find(DSML_CALLS)
    if start < 0:
        return reply, []
    calls = []
    for name, body in _INVOKE.findall(reply[start:]):
        arguments = {
            key: value if is_text == "true" else _arguments(value)
            for key, is_text, value in _PARAMETER.findall(body)
        }
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    return reply[:start].removesuffix("\n\n"), calls
