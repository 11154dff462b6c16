"""The OpenAI request fields beyond plain sampling: tools, tool_choice, response_format,
logprobs, logit_bias, reasoning_effort, tool-call history turns; and the check that refuses any field
Itamae does not implement (a 400 naming it, never silently ignored).

Shapes follow OpenAI's API reference for chat completions (tools[].function {name,
description, parameters, strict}; tool_choice "none" | "auto" | "required" |
{type: "function", function: {name}}; response_format text | json_object | json_schema
{name, schema, strict}; logprobs + top_logprobs 0..20) and completions (logprobs 0..5).
"""

from __future__ import annotations

import re

from app.api import schema
from app.api.schema import bad_param, refuse_unknown
from engine.types import MAX_TOP_LOGPROBS, GenerationRequest, OutputConstraint

SAMPLING_FIELDS = {
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "seed",
    "max_tokens",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "experts_per_token",
}
CHAT_FIELDS = SAMPLING_FIELDS | {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "reasoning_effort",
}
# OpenAI's reasoning_effort values; a template's thinking switch is on or off, so "none"
# turns it off and every level turns it on (DeepSeek V3.1/V3.2's thinking mode)
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt", "logprobs", "echo", "suffix"}
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's rule for function names


def logit_bias(body: dict) -> dict[int, float]:
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad_param("logit_bias", "'logit_bias' must map token ids to numbers.")
    out = {}
    for key, value in raw.items():
        ok_value = isinstance(value, int | float) and not isinstance(value, bool)
        if not (str(key).isdigit() and ok_value and -100 <= value <= 100):
            raise bad_param(
                "logit_bias",
                f"'logit_bias' entries must be token id -> number in [-100, 100], got "
                f"{key!r}: {value!r}.",
            )
        out[int(key)] = float(value)
    return out


def chat_logprobs(body: dict) -> int | None:
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise bad_param("logprobs", "'logprobs' must be true or false.")
    if top is not None:
        if not wanted:
            raise bad_param("top_logprobs", "'top_logprobs' needs 'logprobs': true.")
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad_param("top_logprobs", f"'top_logprobs' must be 0 to {MAX_TOP_LOGPROBS}.")
    return (top or 0) if wanted else None


def completion_logprobs(body: dict) -> int | None:
    value = body.get("logprobs")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_param("logprobs", "'logprobs' must be an integer (0 to 5).")
    if not 0 <= value <= MAX_COMPLETION_LOGPROBS:
        raise bad_param("logprobs", f"'logprobs' must be 0 to {MAX_COMPLETION_LOGPROBS}.")
    return value


def tools(body: dict) -> list[dict] | None:
    raw = body.get("tools")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise bad_param("tools", "'tools' must be a list of function tools.")
    out = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise bad_param(f"tools[{i}]", "Each tool must be {type: 'function', function: {...}}.")
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise bad_param(
                f"tools[{i}].function.name", "A function name is 1-64 of a-z A-Z 0-9 _ . -"
            )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise bad_param(
                f"tools[{i}].function.parameters", "'parameters' must be a JSON schema."
            )
        entry = {"name": name, "parameters": parameters}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        out.append({"type": "function", "function": entry})
    return out or None


def apply_tool_choice(body: dict, req: GenerationRequest) -> None:
    """tool_choice onto the request; "none" takes the tools away."""
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        return
    if choice == "none":
        req.tools = None
    elif choice == "required":
        req.tool_choice = "required"
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        req.tool_choice, req.tool_name = "function", choice["function"].get("name")
    else:
        raise bad_param(
            "tool_choice", "'tool_choice' must be none, auto, required or {type: 'function', ...}."
        )
    if req.tool_choice != "auto" and not req.tools:
        raise bad_param("tool_choice", "'tool_choice' needs 'tools'.")


def response_format(body: dict) -> OutputConstraint | None:
    raw = body.get("response_format")
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint(json_schema={"type": "object"})
    if kind == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_param("response_format", "'json_schema' needs a 'schema' object.")
        return OutputConstraint(json_schema=schema)
    raise bad_param(
        "response_format", "'response_format' type must be text, json_object or json_schema."
    )


def apply_reasoning_effort(body: dict, req: GenerationRequest) -> None:
    """OpenAI's `reasoning_effort`: none turns thinking off, minimal/low/medium/high turn
    it on at that level (minimal is the lowest level the open templates have, low)."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return
    if effort == "none":
        req.enable_thinking = False
    elif effort in ("minimal", "low", "medium", "high"):
        req.reasoning_effort = "low" if effort == "minimal" else effort
    else:
        raise bad_param(
            "reasoning_effort", "'reasoning_effort' must be none, minimal, low, medium or high."
        )


def _penalty_alias(body: dict) -> dict:
    """vLLM's and SGLang's `repetition_penalty` is llama.cpp's `repeat_penalty` (Itamae's
    remote backend sends both, so another Itamae can serve it)."""
    if "repetition_penalty" not in body:
        return body
    alias = body["repetition_penalty"]
    if "repeat_penalty" in body and body["repeat_penalty"] != alias:
        raise bad_param("repetition_penalty", "'repetition_penalty' and 'repeat_penalty' differ.")
    body = {k: v for k, v in body.items() if k != "repetition_penalty"}
    body["repeat_penalty"] = alias
    return body


def chat_request(body: dict, n_experts: int = 0) -> GenerationRequest:
    body = _penalty_alias(body)
    refuse_unknown(body, CHAT_FIELDS)
    req = schema.chat_request(body, n_experts)
    req.sampling.logit_bias = logit_bias(body)
    req.sampling.logprobs = chat_logprobs(body)
    req.tools = tools(body)
    apply_tool_choice(body, req)
    req.constraint = response_format(body)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_param("parallel_tool_calls", "'parallel_tool_calls' must be true or false.")
    req.parallel_tool_calls = parallel
    apply_reasoning_effort(body, req)
    return req


def completion_request(body: dict, n_experts: int = 0) -> GenerationRequest:
    body = _penalty_alias(body)
    refuse_unknown(body, COMPLETION_FIELDS)
    req = schema.completion_request(body, n_experts)
    req.sampling.logit_bias = logit_bias(body)
    req.sampling.logprobs = completion_logprobs(body)
    return req
