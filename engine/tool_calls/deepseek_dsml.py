"""DeepSeek-V3.2's and V4's tool calls (DSML), read back out of a reply and forced.

DeepSeek's encoding (encoding/encoding_dsv32.py in deepseek-ai/DeepSeek-V3.2, rendered by
converters/archs/deepseek_v32_chat.jinja; llama.cpp's own template in
models/templates/deepseek-ai-DeepSeek-V3.2.jinja writes the same markup) has the assistant
write its calls after its content as

    \\n\\n<｜DSML｜function_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="KEY" string="true">text</｜DSML｜parameter>
    <｜DSML｜parameter name="KEY" string="false">JSON</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>

("｜DSML｜" is plain text to V3.2's tokenizer, not an added token). DeepSeek-V4's encoding
(encoding/encoding_dsv4.py in deepseek-ai/DeepSeek-V4-Flash, rendered by
converters/archs/deepseek_v4_chat.jinja) writes the same markup in a `tool_calls` block
instead of `function_calls`. V3.1's format (<｜tool▁call▁begin｜>...) is formats.DeepSeek.
"""

from __future__ import annotations

import json
import re

from engine.types import ToolCall

from .formats import ToolFormat, _parameters, _per_tool, _xml_value_part

DSML = "｜DSML｜"
_INVOKE = re.compile(rf'<{DSML}invoke name="([^"]+)">\n?(.*?)</{DSML}invoke>', re.DOTALL)
_PARAMETER = re.compile(
    rf'<{DSML}parameter name="([^"]+)" string="(true|false)">(.*?)</{DSML}parameter>', re.DOTALL
)


class DeepSeekDSML(ToolFormat):
    name = "deepseek_dsml"
    block = "function_calls"  # the element that holds a reply's calls
    markers = (DSML,)  # the template builds its tags from this token
    starts = (f"<{DSML}function_calls>",)

    def parse(self, text: str, tools: list[dict]) -> tuple[str, list[ToolCall]]:
        start = text.find(self.starts[0])
        if start < 0:
            return text.strip(), []
        calls = [
            ToolCall(name, json.dumps(_arguments(body), ensure_ascii=False))
            for name, body in _INVOKE.findall(text[start:])
        ]
        return self.content_before_calls(text), calls

    def forced(self, tools, name):
        # the encoding's blank line between content (none here) and the block
        opening = f'\n\n<{DSML}{self.block}>\n<{DSML}invoke name="'
        return _per_tool(opening, tools, name, lambda tool: _call(tool, self.block))


class DeepSeekV4DSML(DeepSeekDSML):
    """DeepSeek-V4: the calls in a <｜DSML｜tool_calls> block. Its templates (Itamae's and
    llama.cpp's models/templates/deepseek-ai-DeepSeek-V4.jinja) close that tag, which no
    V3.2 template has: `tool_calls>` tells them apart."""

    name = "deepseek_v4_dsml"
    block = "tool_calls"
    markers = (DSML, "tool_calls>")
    starts = (f"<{DSML}tool_calls>",)


def _call(tool: dict, block: str) -> list:
    """One call's parts after the opening: its name, then each required argument, strings
    bare (string="true"), other values as JSON of their schema, as the encoding writes."""
    parts: list = [("text", tool["function"]["name"] + '">\n')]
    schema = _parameters(tool)
    for key in schema.get("required", []):
        value = _xml_value_part(key, schema.get("properties", {}).get(key, {}))
        is_text = "false" if value[0] == "json" else "true"
        parts += [
            ("text", f'<{DSML}parameter name="{key}" string="{is_text}">'),
            value,
            ("text", f"</{DSML}parameter>\n"),
        ]
    return parts + [("text", f"</{DSML}invoke>\n</{DSML}{block}>")]


def _arguments(body: str) -> dict:
    """Parameters by name: string="true" ones as written, the others as JSON values (text
    that is not JSON is kept as text rather than losing the call)."""
    return {key: _value(raw, is_text == "true") for key, is_text, raw in _PARAMETER.findall(body)}


def _value(raw: str, is_text: bool):
    if is_text:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
