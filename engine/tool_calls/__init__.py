"""Tool calls: the template family's format, history turns as templates expect them,
calls forced by constrained decoding, and calls parsed back out of a reply.

Message dicts follow transformers' chat-template conventions (docs: "Tool use"): an
assistant turn carries `tool_calls` [{id, type: "function", function: {name, arguments}}]
with arguments as a mapping, a tool result is {"role": "tool", content, tool_call_id,
name}. A template that knows no tools (no `tools` in its text, as the demo model's
ChatML) gets Hermes' format: the tools described in a system message, calls written as
<tool_call> JSON, results sent back as user turns in <tool_response>, the convention of
Qwen's and Hermes' templates.
"""

from __future__ import annotations

import json

from converters.core.errors import ItamaeError
from engine.types import GenerationRequest, Message, OutputConstraint, ToolCall

from .deepseek_dsml import DeepSeekDSML, DeepSeekV4DSML
from .formats import DeepSeek, Glm45, Harmony, Hermes, KimiK2, Llama3, MiniMaxM2, ToolFormat

# Most specific first: GLM's <tool_call> also matches Hermes' marker.
FORMATS: tuple[ToolFormat, ...] = (
    Harmony(),
    KimiK2(),
    MiniMaxM2(),
    DeepSeekV4DSML(),  # before V3.2's: both templates build tags from ｜DSML｜
    DeepSeekDSML(),
    DeepSeek(),
    Glm45(),
    Hermes(),
    Llama3(),
)
GENERIC = Hermes()

__all__ = [
    "FORMATS",
    "ToolCall",
    "ToolFormat",
    "forced_constraint",
    "format_for",
    "generic_tools_message",
    "renders_tool_list",
    "template_messages",
]


def format_for(template: str) -> tuple[ToolFormat, bool]:
    """(the family's format, whether the template writes tool calls itself); a template
    that writes none gets Hermes' format."""
    for fmt in FORMATS:
        if fmt.detect(template):
            return fmt, True
    return GENERIC, False


def renders_tool_list(template: str) -> bool:
    """Whether the template describes the `tools` to the model (DeepSeek V3.1's writes
    calls but leaves the list to the system prompt)."""
    return "tools" in template


def _call_dict(call: ToolCall, index: int) -> dict:
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as e:
        raise ItamaeError(
            f"A tool call's arguments are not JSON ({call.name}: {e}).",
            "Send the arguments exactly as the model wrote them.",
        ) from e
    return {
        "id": call.id or f"call_{index}",
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def template_messages(messages: list[Message], native: bool) -> list[dict]:
    """Messages as chat templates read them; for a template without tool support, in
    Hermes' format."""
    out: list[dict] = []
    for m in messages:
        if native:
            entry: dict = {"role": m.role, "content": m.content}
            if m.tool_calls:
                entry["tool_calls"] = [_call_dict(c, i) for i, c in enumerate(m.tool_calls)]
            if m.role == "tool":
                entry.update(tool_call_id=m.tool_call_id, name=m.name)
            out.append(entry)
        elif m.role == "tool":
            out.append(
                {"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"}
            )
        elif m.tool_calls:
            calls = "\n".join(
                "<tool_call>\n"
                + json.dumps({"name": c.name, "arguments": json.loads(c.arguments or "{}")})
                + "\n</tool_call>"
                for c in m.tool_calls
            )
            out.append({"role": m.role, "content": (m.content + "\n" + calls).strip()})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def generic_tools_message(tools: list[dict], how_to_call: bool) -> str:
    """The system text that lists the tools for a template that does not: Qwen's wording,
    shortened (a small model's context is short), the tools as compact JSON, and with
    `how_to_call` the Hermes call format."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False, separators=(",", ":")) for t in tools)
    text = f"# Tools\n<tools>\n{lines}\n</tools>"
    if how_to_call:
        text += (
            "\nTo call a function, write <tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )
    return text


def forced_constraint(fmt: ToolFormat, req: GenerationRequest) -> OutputConstraint | None:
    """The constraint that makes `required`/named tool_choice certain; None for "auto"."""
    if req.tool_choice == "auto" or not req.tools:
        return None
    name = req.tool_name if req.tool_choice == "function" else None
    if name is not None and not any(t["function"]["name"] == name for t in req.tools):
        raise ItamaeError(f"tool_choice names {name!r}, which is not among the tools.", "")
    forced = fmt.forced(req.tools, name)
    if forced is None:
        raise ItamaeError(
            f"This model's tool-call format ({fmt.name}) cannot be forced"
            + (" to choose among several tools." if name is None else "."),
            "Name one function in tool_choice, or use tool_choice 'auto'.",
        )
    return OutputConstraint(
        json_schema=forced.schema, prefix=forced.prefix, sequences=forced.sequences
    )
