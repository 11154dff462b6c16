"""DeepSeek-V3.2's tool calls (DSML), read back out of a reply.

V3.2's template (deepseek-ai/DeepSeek-V3.2; llama.cpp's copy in
models/templates/deepseek-ai-DeepSeek-V3.2.jinja) writes an assistant's calls as

    <｜DSML｜function_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="KEY" string="true">text</｜DSML｜parameter>
    <｜DSML｜parameter name="KEY" string="false">JSON</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>

V3.1's format (<｜tool▁call▁begin｜>...) is formats.DeepSeek.
"""

from __future__ import annotations

import json
import re

from engine.types import ToolCall

from .formats import ToolFormat

_INVOKE = re.compile(r'<｜DSML｜invoke name="([^"]+)">\n?(.*?)</｜DSML｜invoke>', re.DOTALL)
_PARAMETER = re.compile(
    r'<｜DSML｜parameter name="([^"]+)" string="(true|false)">(.*?)</｜DSML｜parameter>', re.DOTALL
)


class DeepSeekDSML(ToolFormat):
    name = "deepseek_dsml"
    markers = ("｜DSML｜",)  # the template builds its tags from this token
    starts = ("<｜DSML｜function_calls>",)

    def parse(self, text: str, tools: list[dict]) -> tuple[str, list[ToolCall]]:
        start = text.find(self.starts[0])
        if start < 0:
            return text.strip(), []
        calls = [
            ToolCall(name, json.dumps(_arguments(body), ensure_ascii=False))
            for name, body in _INVOKE.findall(text[start:])
        ]
        return self.content_before_calls(text), calls


def _arguments(body: str) -> dict:
    """Parameters by name: string="true" ones as written, the others as JSON values."""
    return {
        key: value if is_text == "true" else json.loads(value)
        for key, is_text, value in _PARAMETER.findall(body)
    }
