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

from converters.core.errors import ItamaeError
from engine.chat_template import render_chat, template_variables
from engine.reasoning import THINK_CLOSE, THINK_OPEN
from engine.tool_calls import (
    ToolFormat,
    forced_constraint,
    format_for,
    generic_tools_message,
    renders_tool_list,
    template_messages,
)
from engine.types import GenerationRequest, Message, OutputConstraint, ToolCall


@dataclass
class PromptPlan:
    text: str  # the prompt, with a forced answer's opening at its end
    constraint: OutputConstraint | None
    tool_format: ToolFormat | None  # set when the request offered tools
    tools: list[dict]
    parallel_tool_calls: bool = True

    @property
    def opens_reasoning(self) -> bool:
        """The prompt ends inside a reasoning block (DeepSeek-R1's and V3.1's thinking
        mode open `<think>` in the generation prompt): the reply starts as reasoning."""
        return self.text.rstrip().endswith(THINK_OPEN)

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
    extra.update(reasoning_switches(template, req))
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
        # A prompt that ends inside an opened reasoning block (DeepSeek's thinking mode) is
        # closed before a forced call's opening: the call is an answer, not reasoning.
        if text.endswith(THINK_OPEN):
            text += THINK_CLOSE
        text += constraint.prefix
    return PromptPlan(text, constraint, fmt if tools else None, tools, req.parallel_tool_calls)


class ReasoningSwitchError(ItamaeError):
    """The request asks for a reasoning setting the model's chat template has no switch for."""


def reasoning_switches(template: str, req: GenerationRequest) -> dict:
    """The template variables that carry the request's thinking switch and effort.

    Templates name the switch differently: `enable_thinking` (Qwen3, GLM, llama.cpp's
    server), `thinking` (DeepSeek-V3.1 and later), `reasoning_effort` (gpt-oss, whose
    reasoning cannot be turned off). An effort level turns thinking on where the template
    has only an on/off switch, as Ollama's `think` levels do; a setting the template has
    no variable for is refused rather than dropped.
    """
    if req.enable_thinking is None and req.reasoning_effort is None:
        return {}
    names = template_variables(template)
    switches = [name for name in ("enable_thinking", "thinking") if name in names]
    out: dict = {}
    if req.reasoning_effort is not None:
        if "reasoning_effort" in names:
            out["reasoning_effort"] = req.reasoning_effort
        elif switches:
            out.update(dict.fromkeys(switches, True))
        else:
            raise ReasoningSwitchError(
                "This model's chat template has no reasoning setting.",
                "Leave the reasoning setting at the model's default (no reasoning_effort).",
            )
    if req.enable_thinking is not None:
        if switches:
            out.update(dict.fromkeys(switches, req.enable_thinking))
        elif req.enable_thinking and "reasoning_effort" in names:
            pass  # this template always reasons: thinking on is what it does anyway
        elif "reasoning_effort" in names:
            raise ReasoningSwitchError(
                "This model always reasons; its chat template cannot turn thinking off.",
                "Ask for the least reasoning instead: reasoning_effort 'low' (think 'low').",
            )
        else:
            raise ReasoningSwitchError(
                "This model's chat template has no thinking switch.",
                "Leave the reasoning setting at the model's default (no thinking switch).",
            )
    return out


def _with_tools_system_message(
    messages: list[Message], tools: list[dict], how_to_call: bool
) -> list[Message]:
    described = generic_tools_message(tools, how_to_call)
    if messages and messages[0].role == "system":
        first = messages[0]
        return [Message("system", f"{first.content}\n\n{described}"), *messages[1:]]
    return [Message("system", described), *messages]
