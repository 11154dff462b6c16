"""DeepSeek-V3.1's tool calls read back out of a reply.

The V3.1 template (deepseek-ai/DeepSeek-V3.1's tokenizer_config.json; llama.cpp's copy in
models/templates/deepseek-ai-DeepSeek-V3.1.jinja) writes an assistant's calls after its
content as

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGUMENTS<｜tool▁call▁end｜>...
    <｜tool▁calls▁end｜>

with ARGUMENTS passed through `tojson`: a JSON object when the history held the arguments
as a mapping (transformers' convention), a JSON string holding that object when it held
OpenAI's argument text. Unlike V3/R1 there is no `function` type and no ```json fence.
llama.cpp reads the same markers (common/chat-diff-analyzer.cpp).
"""

from __future__ import annotations

import json
import re

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
_CALL = re.compile(r"<｜tool▁call▁begin｜>(.+?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", re.DOTALL)
END_OF_SENTENCE = "<｜end▁of▁sentence｜>"


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
