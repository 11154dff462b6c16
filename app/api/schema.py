"""Request bodies of the OpenAI-compatible API, validated into engine requests.

Field names, ranges and defaults follow OpenAI's API reference for
`POST /v1/chat/completions` and `POST /v1/completions` (temperature 0..2 default 1,
top_p 0..1, up to 4 stop strings, n = 1 only here). Like llama.cpp's server
(tools/server/README.md) the bodies may also carry top_k, min_p and repeat_penalty,
which local samplers have and OpenAI's does not. Every failure is an `APIError` that
names the offending parameter, so a client sees what to fix.
"""

from __future__ import annotations

import json
import math
from typing import Any

from engine.types import GenerationRequest, Message, SamplingParams, ToolCall

# Roles a chat template knows. OpenAI's newer "developer" role is the system prompt.
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_MAX_STOP = 4  # OpenAI's limit on stop sequences


class APIError(Exception):
    """An error answered as OpenAI-style JSON: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_param(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def refuse_unknown(body: dict, known: set[str], where: str = "") -> None:
    """A field this server does not implement is refused by name, never ignored (the same
    rule on the OpenAI, Ollama and Anthropic surfaces; `where` prefixes nested fields)."""
    for name in body:
        if name not in known:
            raise APIError(
                400,
                f"The field '{where}{name}' is not supported by this server.",
                param=where + name,
                code="unsupported_parameter",
            )


def _number(body: dict, name: str, default, low, high, *, integer=False, low_open=False):
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise bad_param(name, f"'{name}' must be {kind}, got {value!r}.")
    if not math.isfinite(value):  # Python's json reads NaN and Infinity
        raise bad_param(name, f"'{name}' must be a finite number, got {value!r}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        bounds = f"{'>' if low_open else '>='} {low}" if high is None else f"in [{low}, {high}]"
        raise bad_param(name, f"'{name}' must be {bounds}, got {value!r}.")
    return value


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad_param("stop", "'stop' must be a non-empty string or a list of them.")
    if len(stop) > _MAX_STOP:
        raise bad_param("stop", f"'stop' takes at most {_MAX_STOP} sequences, got {len(stop)}.")
    return stop


def sampling_params(body: dict) -> SamplingParams:
    """SamplingParams from an OpenAI body; raises APIError on a bad value."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _number({param: max_tokens}, param, None, 1, None, integer=True)
    n = _number(body, "n", 1, 1, None, integer=True)
    if n != 1:
        raise APIError(400, "Only n=1 is supported.", param="n", code="unsupported_value")
    # Seeds are 64-bit wherever they end up (torch.manual_seed, llama.cpp's sampler).
    seed = _number(body, "seed", None, -(2**63), 2**64 - 1, integer=True)
    return SamplingParams(
        temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)),
        top_k=_number(body, "top_k", 0, 0, None, integer=True),
        min_p=float(_number(body, "min_p", 0.0, 0.0, 1.0)),
        repeat_penalty=float(_number(body, "repeat_penalty", 1.0, 0.0, None, low_open=True)),
        presence_penalty=float(_number(body, "presence_penalty", 0.0, -2.0, 2.0)),
        frequency_penalty=float(_number(body, "frequency_penalty", 0.0, -2.0, 2.0)),
        seed=seed,
        max_tokens=max_tokens if max_tokens is not None else 0,  # 0: filled in by the caller
        stop=_stop(body),
    )


def model_name(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_param("model", "'model' is required: the id listed by GET /v1/models.")
    return model


def stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) from `stream` and `stream_options`."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_param("stream", "'stream' must be true or false.")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_param("stream_options", "'stream_options' must be an object.")
    return stream, bool(options.get("include_usage", False))


def _content_text(content: Any, index: int) -> str:
    param = f"messages[{index}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise APIError(
                    400,
                    "Only text content parts are supported (no images or audio).",
                    param=param,
                    code="unsupported_value",
                )
            pieces.append(str(part.get("text", "")))
        return "".join(pieces)
    raise bad_param(param, f"'{param}' must be a string or a list of text parts.")


def chat_messages(body: dict) -> list[Message]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "'messages' must be a non-empty list of {role, content}.")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_param(f"messages[{i}]", f"messages[{i}] must be an object.")
        role = message.get("role")
        role = _ROLES.get(role) if isinstance(role, str) else None
        if role is None:
            raise bad_param(
                f"messages[{i}].role",
                f"messages[{i}].role must be one of {sorted(_ROLES)}, got {message.get('role')!r}.",
            )
        content = _content_text(message.get("content"), i)
        calls = _tool_calls(message.get("tool_calls"), i) if role == "assistant" else []
        out.append(
            Message(
                role,
                content,
                tool_calls=calls,
                tool_call_id=str(message.get("tool_call_id") or ""),
                name=str(message.get("name") or "") if role == "tool" else "",
            )
        )
    return out


def _tool_calls(raw, index: int) -> list[ToolCall]:
    """An assistant history turn's tool_calls."""
    if raw is None:
        return []
    param = f"messages[{index}].tool_calls"
    if not isinstance(raw, list):
        raise bad_param(param, f"'{param}' must be a list.")
    out = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_param(param, "Each tool call needs function.name and function.arguments.")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        try:
            json.loads(arguments)
        except json.JSONDecodeError as e:
            raise bad_param(param, f"A tool call's arguments are not JSON: {e}.") from e
        out.append(ToolCall(function["name"], arguments, str(call.get("id", ""))))
    return out


def experts_per_token(body: dict, n_experts: int) -> int | None:
    """Itamae's own field: run this many routed experts per token instead of the model's
    own number (fewer is faster). Between 1 and the model's routed experts."""
    if body.get("experts_per_token") is not None and n_experts == 0:
        raise bad_param("experts_per_token", "This model has no experts to choose from.")
    return _number(body, "experts_per_token", None, 1, n_experts or None, integer=True)


def chat_request(body: dict, n_experts: int = 0) -> GenerationRequest:
    return GenerationRequest(
        messages=chat_messages(body),
        sampling=sampling_params(body),
        experts_per_token=experts_per_token(body, n_experts),
    )


def completion_request(body: dict, n_experts: int = 0) -> GenerationRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the openai client may wrap one prompt in a list
    if not isinstance(prompt, str):
        raise bad_param("prompt", "'prompt' must be a string (one prompt per request).")
    if body.get("echo"):
        raise APIError(400, "echo is not supported.", param="echo", code="unsupported_value")
    if body.get("suffix"):
        raise APIError(400, "suffix is not supported.", param="suffix", code="unsupported_value")
    return GenerationRequest(
        prompt=prompt,
        sampling=sampling_params(body),
        experts_per_token=experts_per_token(body, n_experts),
    )
