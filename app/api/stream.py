"""One API request's run: from the shared ModelManager's events to OpenAI objects.

Each request's events come from a thread of its own (a request queued for the model
must not hold one of the event loop's few worker threads) and are handed to the loop.
A client that disconnects sets the request's cancel flag, which stops its generation
or takes it out of the queue: while it waits or while a whole (non-streamed) answer is
generated, by polling `request.is_disconnected()`; while streaming, Starlette cancels
the response when the client goes, and the SSE generator's `finally` sets the flag.

Object shapes follow OpenAI's API reference: chat.completion / chat.completion.chunk
(the first chunk carries the role, the last the finish reason, then an optional usage
chunk with no choices) and text_completion; streams end with `data: [DONE]`. Beside
`usage`, `timings` carries the engine's speed figures, as llama.cpp's server does.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.api import openai_out as out
from app.api.schema import APIError
from app.model_manager import ModelManager, NoModelLoaded
from converters.core.errors import ContextTooLong
from engine.reasoning import ReasoningStream, split_reasoning
from engine.types import FinalEvent, GenerationRequest, Stats, TokenEvent

# How often a request that waits (queued, or a non-streamed one generating) checks
# whether its client is still there.
_DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    pass


class EventPump:
    """Runs `manager.stream(req)` in a thread of its own and hands events to the loop."""

    _END = object()

    def __init__(self, manager: ModelManager, req: GenerationRequest):
        self.cancel = threading.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                self.cancel.set()

        def produce() -> None:
            try:
                for event in manager.stream(req, self.cancel):
                    put(event)
            finally:
                put(self._END)

        threading.Thread(target=produce, name="itamae-api-request", daemon=True).start()

    async def next(self, request: Request | None = None):
        """The next event, or None at the end. With `request`, watches for a disconnect."""
        while True:
            try:
                item = await asyncio.wait_for(
                    self._queue.get(), _DISCONNECT_POLL_S if request is not None else None
                )
            except TimeoutError:
                if await request.is_disconnected():
                    self.cancel.set()
                    raise ClientGone() from None
                continue
            return None if item is self._END else item


async def respond(
    request: Request,
    manager: ModelManager,
    req: GenerationRequest,
    shape,
    *,
    model: str,
    stream: bool,
    include_usage: bool,
) -> Response:
    """Queue `req` on the manager and answer with its result, whole or as SSE chunks."""
    pump = EventPump(manager, req)
    ident = f"{shape.id_prefix}-{uuid.uuid4().hex}"
    created = int(time.time())
    try:
        # Wait for the first event before answering, so an error (a failed model, a
        # prompt the backend refuses) still gets a proper status code.
        first = await pump.next(request)
    except ClientGone:
        return Response(status_code=499)
    if isinstance(first, FinalEvent) and failure(first) is not None:
        raise failure(first)
    if not stream:
        return await _whole_response(request, pump, first, shape, ident, created, model)
    chunks = _sse(pump, first, shape, ident, created, model, include_usage)
    return StreamingResponse(
        chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def failure(final: FinalEvent) -> APIError | None:
    """The error to answer for a final event that is not a normal end, else None."""
    if final.finish_reason in ("stop", "length"):
        return None
    if final.finish_reason == "cancelled":
        # Not this client's doing (a client that left gets no answer at all): the model
        # was unloaded or replaced while the request waited or ran.
        return APIError(
            503,
            "The generation was interrupted: the model was unloaded or replaced.",
            type="server_error",
            code="interrupted",
        )
    message = final.error or "The generation failed."
    exception = getattr(final, "exception", None)  # set by the manager if the backend raised
    if isinstance(exception, NoModelLoaded):
        return APIError(503, message, type="server_error", code="model_not_loaded")
    # A backend that reports the error itself instead of raising (the torch engine
    # yields FinalEvent("error") for ContextTooLong) is matched by its words.
    too_long = isinstance(exception, ContextTooLong) or (
        exception is None and "context" in message.lower()
    )
    if too_long:
        return APIError(400, message, code="context_length_exceeded")
    return APIError(500, message, type="server_error", code="generation_failed")


async def _whole_response(request, pump, first, shape, ident, created, model) -> Response:
    pieces: list[str] = []
    logprobs = [] if shape.logprobs else None
    event = first
    try:
        while not isinstance(event, FinalEvent):
            if event is None:
                raise APIError(500, "The backend ended without a final event.", type="server_error")
            pieces.append(event.text)
            if logprobs is not None and event.logprob is not None:
                logprobs.append(event.logprob)
            event = await pump.next(request)
    except ClientGone:
        return Response(status_code=499)
    if failure(event) is not None:
        raise failure(event)
    choice = shape.whole_choice("".join(pieces), event.finish_reason, event, logprobs)
    return JSONResponse(
        {
            "id": ident,
            "object": shape.object,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": _usage(event.stats),
            "timings": _timings(event.stats),
        }
    )


async def _sse(pump, first, shape, ident, created, model, include_usage) -> AsyncIterator[str]:
    def chunk(choices, **extra) -> str:
        data = {
            "id": ident,
            "object": shape.chunk_object,
            "created": created,
            "model": model,
            "choices": choices,
        }
        data.update(extra)
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        if shape.opening_delta is not None:
            yield chunk([shape.chunk_choice(shape.opening_delta, None)])
        event = first
        while isinstance(event, TokenEvent):
            # with tools offered, the reply is held until it is known to be a call or not
            if (event.text or event.logprob is not None) and not shape.tools:
                lp = shape.chunk_logprobs([event.logprob] if event.logprob else [])
                delta = shape.text_delta(event.text)
                if delta is not None or lp is not None:
                    yield chunk([shape.chunk_choice(delta or shape.empty_delta, None, lp)])
            event = await pump.next()
        if event is None:
            event = FinalEvent("error", Stats(), error="The backend ended without a final event.")
        error = failure(event)
        if error is not None:  # the client's own stream stays in OpenAI's error shape
            yield f"data: {json.dumps(error.body())}\n\n"
        else:
            tail = None if shape.tools else shape.flush_delta()
            if tail is not None:
                yield chunk([shape.chunk_choice(tail, None)])
            for delta in shape.held_deltas(event):
                yield chunk([shape.chunk_choice(delta, None)])
            finish = "tool_calls" if event.tool_calls else event.finish_reason
            yield chunk([shape.chunk_choice(shape.closing_delta, finish)])
            if include_usage:
                yield chunk([], usage=_usage(event.stats), timings=_timings(event.stats))
        yield "data: [DONE]\n\n"
    finally:
        # Reached on a normal end too, where it changes nothing; on a disconnect the
        # response task is cancelled here and the generation stops at its next token.
        pump.cancel.set()


def _usage(stats: Stats) -> dict:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def _timings(stats: Stats) -> dict:
    """Speed figures beside `usage` (as llama.cpp's server adds `timings`)."""
    return {
        "ttft_s": stats.ttft_s,
        "prefill_tps": stats.prefill_tps,
        "decode_tps": stats.decode_tps,
    }


class _Shape:
    """How one request's answer is written; made per request by `for_request`."""

    def __init__(self, req: GenerationRequest, opens_reasoning: bool = False):
        self.logprobs = req.sampling.logprobs is not None  # the request asked for logprobs
        self.tools = bool(req.tools)  # the request offered tools
        self.opens_reasoning = opens_reasoning  # the prompt ends inside a <think> block

    @classmethod
    def for_request(cls, req: GenerationRequest, opens_reasoning: bool = False):
        return cls(req, opens_reasoning)

    def held_deltas(self, final: FinalEvent) -> list:
        return []

    def flush_delta(self):
        """What the stream held back at its end (a partial tag that never closed)."""
        return None


class ChatShape(_Shape):
    """chat.completion objects: the text sits in message / delta.

    A reasoning model's thoughts (<think> blocks, Harmony's analysis channel) are not
    part of `content`: they go to `reasoning_content`, as DeepSeek's API and llama.cpp's
    and vLLM's servers write them, and Harmony's markup never reaches the client.
    """

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    opening_delta = {"role": "assistant", "content": ""}
    closing_delta: dict = {}
    empty_delta: dict = {}

    def __init__(self, req: GenerationRequest, opens_reasoning: bool = False):
        super().__init__(req, opens_reasoning)
        self.reasoning = ReasoningStream(opens_reasoning)

    def text_delta(self, text: str) -> dict | None:
        thinking, answer = self.reasoning.feed(text)
        delta = {}
        if thinking:
            delta["reasoning_content"] = thinking
        if answer:
            delta["content"] = answer
        return delta or None

    def flush_delta(self) -> dict | None:
        thinking, answer = self.reasoning.flush()
        delta = {"reasoning_content": thinking} if thinking else {}
        return {**delta, "content": answer} if answer else delta or None

    def chunk_logprobs(self, entries) -> dict | None:
        return out.chat_logprobs(entries) if self.logprobs else None

    @staticmethod
    def chunk_choice(delta: dict, finish_reason: str | None, logprobs=None) -> dict:
        return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    def held_deltas(self, final: FinalEvent) -> list:
        """With tools offered: the reply's text, then its calls, once the reply is whole."""
        if not self.tools:
            return []
        parts = split_reasoning(final.content or "", self.opens_reasoning)
        held = [{"reasoning_content": parts.thinking}] if parts.thinking else []
        held += [{"content": parts.answer}] if parts.answer else []
        return held + out.tool_call_deltas(final.tool_calls)

    def whole_choice(self, text: str, finish_reason: str, final=None, logprobs=None) -> dict:
        tools_offered = final is not None and final.content is not None
        parts = split_reasoning(final.content if tools_offered else text, self.opens_reasoning)
        message = {"role": "assistant", "content": parts.answer}
        if parts.thinking is not None:
            message["reasoning_content"] = parts.thinking
        if tools_offered:
            message["content"] = parts.answer or None
            if final.tool_calls:
                message["tool_calls"] = out.tool_call_objects(final.tool_calls)
                finish_reason = "tool_calls"
        return {
            "index": 0,
            "message": message,
            "logprobs": out.chat_logprobs(logprobs),
            "finish_reason": finish_reason,
        }


class TextShape(_Shape):
    """text_completion objects: the text sits in choices[].text, chunks and whole alike."""

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"
    opening_delta = None
    closing_delta = ""
    empty_delta = ""

    @staticmethod
    def text_delta(text: str) -> str:
        return text

    def chunk_logprobs(self, entries) -> dict | None:
        return out.completion_logprobs(entries) if self.logprobs else None

    @staticmethod
    def chunk_choice(text: str, finish_reason: str | None, logprobs=None) -> dict:
        return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def whole_choice(self, text: str, finish_reason: str, final=None, logprobs=None) -> dict:
        return TextShape.chunk_choice(text, finish_reason, out.completion_logprobs(logprobs))
