"""Ollama request bodies as engine requests: `options`, `format`, `think`, messages with
tool calls (Ollama's docs/api.md), each unknown field or option refused with a 400.
"""

from __future__ import annotations

import json

from app.api.fields import chat_logprobs
from app.api.schema import bad_param, chat_messages, refuse_unknown, sampling_params
from engine.types import GenerationRequest, OutputConstraint, SamplingParams

OPTIONS = {
    "num_predict",
    "num_ctx",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "repeat_last_n",
}
CHAT_FIELDS = {
    "model",
    "messages",
    "tools",
    "format",
    "options",
    "stream",
    "keep_alive",
    "think",
    "logprobs",
    "top_logprobs",
}
GENERATE_FIELDS = {
    "logprobs",
    "top_logprobs",
    "model",
    "prompt",
    "system",
    "format",
    "options",
    "stream",
    "keep_alive",
    "think",
    "raw",
}
REPEAT_LAST_N = 64  # the window both engines' penalties use


def check_keep_alive(body: dict) -> None:
    """Itamae keeps its one model loaded until another is chosen, which is Ollama's
    keep_alive -1 ("forever"); a time limit or 0 ("unload now") it cannot honour."""
    value = body.get("keep_alive")
    if value is None:
        return
    text = str(value).strip()
    if text.startswith("-") and text.lstrip("-").rstrip("smh").replace(".", "", 1).isdigit():
        return
    raise bad_param(
        "keep_alive",
        f"keep_alive {value!r} is not supported: Itamae keeps the model loaded until another "
        "is chosen. Leave keep_alive out, or pass -1.",
    )


def sampling(body: dict) -> SamplingParams:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise bad_param("options", "'options' must be an object.")
    refuse_unknown(options, OPTIONS, "options.")
    if options.get("repeat_last_n", REPEAT_LAST_N) != REPEAT_LAST_N:
        raise bad_param(
            "options.repeat_last_n", f"Only repeat_last_n={REPEAT_LAST_N} is supported."
        )
    # the OpenAI validator checks ranges and types, under the same names
    openai_body = {
        k: v for k, v in options.items() if k not in ("num_predict", "num_ctx", "repeat_last_n")
    }
    openai_body.setdefault("temperature", 0.8)  # Ollama's default
    predict = options.get("num_predict")
    if predict is not None and predict not in (-1, -2):
        openai_body["max_tokens"] = predict
    sampling = sampling_params(openai_body)
    sampling.logprobs = chat_logprobs(body)  # Ollama's fields are OpenAI's chat ones
    return sampling


def output_format(body: dict) -> OutputConstraint | None:
    fmt = body.get("format")
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return OutputConstraint(json_schema={"type": "object"})
    if isinstance(fmt, dict):
        return OutputConstraint(json_schema=fmt)
    raise bad_param("format", "'format' must be \"json\" or a JSON schema.")


def messages(raw) -> list:
    if not isinstance(raw, list):
        raise bad_param("messages", "'messages' must be a list.")
    converted = []
    for message in raw:
        if not isinstance(message, dict):
            raise bad_param("messages", "Each message must be an object.")
        if message.get("images"):
            raise bad_param("messages", "Images are not supported.")
        entry = {k: v for k, v in message.items() if k in ("role", "content")}
        calls = message.get("tool_calls")
        if calls:
            entry["tool_calls"] = [
                {
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": json.dumps(c["function"].get("arguments", {})),
                    },
                }
                for c in calls
            ]
        if message.get("tool_name"):
            entry["name"] = message["tool_name"]
        converted.append(entry)
    return chat_messages({"messages": converted})


def apply_think(think, req: GenerationRequest) -> None:
    """Ollama's `think`: true, false, or a level ("low", "medium", "high": thinking on at
    that level, gpt-oss's reasoning effort)."""
    if think is None or isinstance(think, bool):
        req.enable_thinking = think
    elif think in ("low", "medium", "high"):
        req.enable_thinking, req.reasoning_effort = True, think
    else:
        raise bad_param("think", "'think' must be true, false, low, medium or high.")


def check_num_ctx(body: dict, backend) -> None:
    num_ctx = (body.get("options") or {}).get("num_ctx")
    context = backend.info.context_length
    if num_ctx is not None and context and num_ctx > context:
        raise bad_param(
            "options.num_ctx",
            f"This model was loaded with a {context}-token context; num_ctx {num_ctx} is "
            "larger. Load it with a longer context in Itamae.",
        )
