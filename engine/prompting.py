"""From a GenerationRequest to the text both engines run, and from the reply back to
content and tool calls: the one place tools, tool_choice and response_format meet the
chat template (engine/chat_template.py renders; engine/tool_calls reads the markup).

A forced answer (a `required` or named tool_choice, or a constraint with a prefix) has
its opening written into the prompt after the generation prompt, so the model continues
it; what follows is held to JSON by the engine's constrained decoding, and the prefix is
part of the reply that is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.chat_template import render_chat
from engine.tool_calls import (
    ToolFormat,
    forced_constraint,
    format_for,
    generic_tools_message,
    renders_tool_list,
    template_messages,
)
from engine.types import GenerationRequest, Message, OutputConstraint, ToolCall

# A prompt that ends inside an opened reasoning block (DeepSeek's thinking mode) is closed
# before a forced call's opening, so the call is an answer, not part of the reasoning
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class PromptPlan:
    text: str  # the prompt, with a forced answer's opening at its end
    constraint: OutputConstraint | None
    tool_format: ToolFormat | None  # set when the request offered tools
    tools: list[dict]
    parallel_tool_calls: bool = True

    @property
    def prefix(self) -> str:
        return self.constraint.prefix if self.constraint else ""

    def read_reply(self, raw: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) from the whole reply text, special tokens included; (None, [])
        when no tools were offered."""
        if self.tool_format is None:
            return None, []
        content, calls = self.tool_format.parse(raw, self.tools)
        if not self.parallel_tool_calls:
            calls = calls[:1]
        for i, call in enumerate(calls):
            call.id = call.id or f"call_{i}"
        return content, calls


def plan_prompt(
    template: str, req: GenerationRequest, bos_token: str = "", eos_token: str = ""
) -> PromptPlan:
    """The prompt for chat messages (`req.messages`) or a raw `req.prompt`."""
    if req.messages is None:
        return PromptPlan(req.prompt or "", req.constraint, None, [])
    tools = req.tools or []
    fmt, native = format_for(template)
    messages = list(req.messages)
    if tools and not renders_tool_list(template):
        messages = _with_tools_system_message(messages, tools, how_to_call=not native)
    extra = {"tools": tools} if tools else {}
    if req.enable_thinking is not None:
        extra["enable_thinking"] = req.enable_thinking
    text = render_chat(
        template,
        template_messages(messages, native),
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
        **extra,
    )
    constraint = (forced_constraint(fmt, req) if tools else None) or req.constraint
    if constraint is not None and constraint.prefix:
        if text.endswith(THINK_OPEN):  # thinking mode (DeepSeek): the call follows the reasoning
            text += THINK_CLOSE
        text += constraint.prefix
    return PromptPlan(text, constraint, fmt if tools else None, tools, req.parallel_tool_calls)


def _with_tools_system_message(
    messages: list[Message], tools: list[dict], how_to_call: bool
) -> list[Message]:
    described = generic_tools_message(tools, how_to_call)
    if messages and messages[0].role == "system":
        first = messages[0]
        return [Message("system", f"{first.content}\n\n{described}"), *messages[1:]]
    return [Message("system", described), *messages]
