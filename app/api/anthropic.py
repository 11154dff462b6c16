"""Anthropic's Messages API on the same server: POST /v1/messages and
/v1/messages/count_tokens, so agents built on Anthropic's SDK can run on a local model.

Shapes follow Anthropic's API reference: a `message` object with content blocks (text,
tool_use {id, name, input}, thinking {thinking, signature}), stop_reason end_turn |
max_tokens | stop_sequence | tool_use, usage {input_tokens, output_tokens}; streams as
server-sent events message_start, content_block_start / _delta (text_delta,
input_json_delta, thinking_delta) / _stop, message_delta (stop reason, output tokens),
message_stop; errors as {"type": "error", "error": {type, message}}. Requests carry
system, multi-turn messages with tool_use / tool_result blocks, max_tokens (required),
stop_sequences, temperature (0..1), top_p, top_k, tools {name, description,
input_schema}, tool_choice auto | any | tool | none, thinking, and output_format
json_schema (structured output). A reply with tools or thinking is streamed once
it is whole, as its blocks are only known then.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.openai import json_body, route_class, served_model_id
from app.api.schema import APIError, bad_param, chat_messages, refuse_unknown, sampling_params
from app.api.stream import ClientGone
from app.api.surface import DEFAULT_MAX_QUEUE, backend_for, run_stream, run_whole, start
from app.model_manager import ModelManager
from engine.reasoning import split_reasoning
from engine.types import FinalEvent, GenerationRequest, OutputConstraint

FIELDS = {
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "output_format",
    "output_config",
}
COUNT_FIELDS = {"model", "messages", "system", "tools", "tool_choice", "thinking"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def _error_body(error: APIError) -> dict:
    kind = _ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_param(where, f"'{where}' must be a string or a list of text blocks.")
    texts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text":
            raise bad_param(where, f"'{where}' holds only text blocks here.")
        texts.append(str(block.get("text", "")))
    return "".join(texts)


def _openai_messages(body: dict) -> list[dict]:
    """Anthropic turns as OpenAI-style messages (system first, tool_result -> tool role)."""
    out = []
    if body.get("system"):
        out.append({"role": "system", "content": _text_of(body["system"], "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_param("messages", "'messages' must be a non-empty list.")
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise bad_param(f"messages.{i}.role", "A message's role is user or assistant.")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise bad_param(f"messages.{i}.content", "'content' is a string or a block list.")
        out.extend(_blocks(role, content, f"messages.{i}.content"))
    return out


def _blocks(role: str, blocks: list, where: str) -> list[dict]:
    texts, calls, results = [], [], []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id", ""), "type": "function", "function": function})
        elif kind == "tool_result" and role == "user":
            content = block.get("content", "")
            text = _text_of(content, where) if content else ""
            results.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}
            )
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier reasoning: chat templates leave it out of the prompt
        else:
            raise bad_param(where, f"Content blocks of type {kind!r} are not supported here.")
    out = list(results)
    if texts or calls or not results:
        turn = {"role": role, "content": "".join(texts)}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    return out


def _tools(body: dict) -> list[dict] | None:
    raw = body.get("tools")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise bad_param("tools", "'tools' must be a list.")
    tools = []
    for i, tool in enumerate(raw):
        if (
            not isinstance(tool, dict)
            or tool.get("type", "custom") != "custom"
            or not tool.get("name")
        ):
            raise bad_param(f"tools.{i}", "Only custom tools {name, description, input_schema}.")
        function = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object"},
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    return tools


def _apply_tool_choice(body: dict, req: GenerationRequest) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    req.parallel_tool_calls = not (kind and choice.get("disable_parallel_tool_use", False))
    if kind == "none":
        req.tools = None
    elif kind == "any":
        req.tool_choice = "required"
    elif kind == "tool":
        req.tool_choice, req.tool_name = "function", choice.get("name")
    elif kind != "auto":
        raise bad_param("tool_choice", "'tool_choice' type is auto, any, tool or none.")
    if req.tool_choice != "auto" and not req.tools:
        raise bad_param("tool_choice", "'tool_choice' needs 'tools'.")


def _request(body: dict) -> GenerationRequest:
    refuse_unknown(body, FIELDS)
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        raise bad_param("max_tokens", "'max_tokens' is required: a positive integer.")
    temperature = body.get("temperature", 1.0)
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        raise bad_param("temperature", "'temperature' must be in [0, 1].")
    stops = body.get("stop_sequences") or []
    openai_like = {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body}
    sampling = sampling_params({**openai_like, "max_tokens": body["max_tokens"]})
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_param("stop_sequences", "'stop_sequences' must be a list of strings.")
    sampling.stop = stops
    req = GenerationRequest(
        messages=chat_messages({"messages": _openai_messages(body)}), sampling=sampling
    )
    req.tools = _tools(body)
    _apply_tool_choice(body, req)
    req.constraint = _output_format(body)
    return req


def _output_format(body: dict) -> OutputConstraint | None:
    """Structured output: output_config.format (the current field) or output_format."""
    config = body.get("output_config")
    if config is not None and (not isinstance(config, dict) or set(config) - {"format"}):
        raise bad_param("output_config", "Of 'output_config' only 'format' is supported.")
    output, param = (config or {}).get("format"), "output_config.format"
    if output is None:
        output, param = body.get("output_format"), "output_format"
    if output is None:
        return None
    if not isinstance(output, dict) or output.get("type") != "json_schema":
        raise bad_param(param, f"'{param}' type must be json_schema.")
    return OutputConstraint(json_schema=output.get("schema") or {"type": "object"})


def _thinking(body: dict) -> bool:
    """Whether the reply shows reasoning as thinking blocks: thinking enabled or adaptive
    (the model reasons or not as its template makes it), not disabled or display "omitted".
    A thinking budget apart from max_tokens is not something the engines can enforce, so
    budget_tokens is refused rather than ignored."""
    thinking = body.get("thinking")
    if thinking is None:
        return False
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "adaptive", "disabled"):
        raise bad_param("thinking", "'thinking' type is enabled, adaptive or disabled.")
    refuse_unknown(thinking, {"type", "display"}, "thinking.")
    return kind != "disabled" and thinking.get("display") != "omitted"


def _content_blocks(text: str, final: FinalEvent, thinking: bool) -> list[dict]:
    answer = final.content if final.content is not None else text
    parts = split_reasoning(answer)
    blocks = []
    if parts.thinking is not None and thinking:
        blocks.append({"type": "thinking", "thinking": parts.thinking, "signature": ""})
    if parts.answer:
        blocks.append({"type": "text", "text": parts.answer})
    for call in final.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_{call.id}",
                "name": call.name,
                "input": json.loads(call.arguments),
            }
        )
    return blocks


def _stop_reason(final: FinalEvent) -> str:
    if final.tool_calls:
        return "tool_use"
    if final.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if final.stop_sequence else "end_turn"


def _usage(final: FinalEvent | None, prompt_tokens: int = 0) -> dict:
    if final is None:
        return {"input_tokens": prompt_tokens, "output_tokens": 0}
    return {
        "input_tokens": final.stats.prompt_tokens,
        "output_tokens": final.stats.completion_tokens,
    }


def anthropic_router(
    manager: ModelManager, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE
) -> APIRouter:
    router = APIRouter(route_class=route_class(api_key, _error_body))

    def backend_named(body):
        if not isinstance(body.get("model"), str):
            raise bad_param("model", "'model' is required: the id listed by GET /v1/models.")
        return backend_for(manager, body["model"])

    @router.post("/v1/messages")
    async def messages(request: Request):
        body = await json_body(request)
        backend = backend_named(body)
        req, thinking = _request(body), _thinking(body)
        if body.get("thinking") is not None:
            req.enable_thinking = body["thinking"].get("type") != "disabled"
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise bad_param("stream", "'stream' must be true or false.")
        model = served_model_id(manager, backend)
        ident = f"msg_{uuid.uuid4().hex}"
        try:
            pump, first = await start(request, manager, backend, req, max_queue)
            if not stream:
                reply = await run_whole(request, pump, first)
                return JSONResponse(_message(ident, model, reply.text, reply.final, thinking))
        except ClientGone:
            return Response(status_code=499)
        hold = bool(req.tools) or thinking
        events = _events(pump, first, ident, model, hold, thinking)
        return StreamingResponse(events, media_type="text/event-stream")

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request):
        body = await json_body(request)
        backend = backend_named(body)
        refuse_unknown(body, COUNT_FIELDS)
        req = _request({**{k: v for k, v in body.items() if k != "thinking"}, "max_tokens": 1})
        exact = getattr(backend, "prompt_tokens", None)
        if exact is None:
            raise APIError(400, "This backend cannot count prompt tokens exactly.")
        tokens = await asyncio.to_thread(exact, req)
        return {"input_tokens": len(tokens)}

    return router


def _message(ident: str, model: str, text: str, final: FinalEvent, thinking: bool) -> dict:
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content_blocks(text, final, thinking),
        "stop_reason": _stop_reason(final),
        "stop_sequence": final.stop_sequence,
        "usage": _usage(final),
    }


def _sse(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data}, ensure_ascii=False)}\n\n"


async def _events(pump, first, ident, model, hold: bool, thinking: bool):
    start_message = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    yield _sse("message_start", {"message": start_message})
    held, text_open = [], False
    async for event in run_stream(pump, first):
        if isinstance(event, FinalEvent):
            if event.finish_reason not in ("stop", "length"):
                error = APIError(500, event.error or "The generation was interrupted.")
                yield _sse("error", {"error": _error_body(error)["error"]})
                return
            if text_open:
                yield _sse("content_block_stop", {"index": 0})
            else:
                for line in _block_events(_content_blocks("".join(held), event, thinking)):
                    yield line
            delta = {"stop_reason": _stop_reason(event), "stop_sequence": event.stop_sequence}
            yield _sse("message_delta", {"delta": delta, "usage": _usage(event)})
            yield _sse("message_stop", {})
            return
        if hold:
            held.append(event.text)
        elif event.text:
            if not text_open:
                block = {"type": "text", "text": ""}
                yield _sse("content_block_start", {"index": 0, "content_block": block})
                text_open = True
            delta = {"type": "text_delta", "text": event.text}
            yield _sse("content_block_delta", {"index": 0, "delta": delta})


def _block_events(blocks: list[dict]):
    """A whole reply's blocks as start / delta / stop events."""
    for index, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text":
            opening, delta = (
                {"type": "text", "text": ""},
                {"type": "text_delta", "text": block["text"]},
            )
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": ""}
            delta = {"type": "thinking_delta", "thinking": block["thinking"]}
        else:
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield _sse("content_block_start", {"index": index, "content_block": opening})
        yield _sse("content_block_delta", {"index": index, "delta": delta})
        if kind == "thinking":
            signature = {"type": "signature_delta", "signature": ""}
            yield _sse("content_block_delta", {"index": index, "delta": signature})
        yield _sse("content_block_stop", {"index": index})
