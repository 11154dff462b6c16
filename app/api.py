"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /v1/completions.

Shapes follow OpenAI's API reference (chat.completion, chat.completion.chunk,
text_completion objects; server-sent events ending in `data: [DONE]`; errors as
{"error": {message, type, param, code}}), so the official `openai` client and the
tools built on it work unchanged. The same router serves `itamae serve` (headless)
and the app's own server beside the UI.

Every request goes through the shared `ModelManager`, which runs one generation at a
time and serves waiting requests in arrival order. Each request's events come from a
thread of its own (a queued request must not hold one of the event loop's worker
threads) and are handed to the loop; a client that disconnects sets the request's
cancel flag, which stops its generation or takes it out of the queue.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from app.api_schema import APIError, chat_request, completion_request, model_name, stream_flags
from app.model_manager import ModelManager
from converters.errors import ContextTooLong, ItamaeError
from engine.types import Backend, FinalEvent, GenerationRequest, Stats, TokenEvent

log = logging.getLogger("itamae.api")

# When the body sets no max_tokens and the context length is unknown: enough for an
# answer, short enough that a forgotten limit does not tie a CPU up for minutes.
DEFAULT_MAX_TOKENS = 512
# How often a request that waits (queued, or a non-streaming one generating) checks
# whether its client is still there.
_DISCONNECT_POLL_S = 0.25


def _route_class(api_key: str | None) -> type[APIRoute]:
    """Routes that check the bearer token and answer APIError as OpenAI-style JSON.

    Done in the route rather than with app-level exception handlers or middleware so
    the router behaves the same in whichever app includes it (headless or beside Gradio).
    """
    expected = api_key.encode() if api_key else None

    class OpenAIRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    if expected is not None:
                        _check_bearer(request, expected)
                    return await handler(request)
                except APIError as e:
                    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                    return JSONResponse(e.body(), status_code=e.status, headers=headers)
                except Exception as e:  # a bug: answer it in the API's own shape, keep serving
                    log.exception("API request failed")
                    error = APIError(
                        500, f"Internal error: {type(e).__name__}: {e}", type="server_error"
                    )
                    return JSONResponse(error.body(), status_code=500)

            return handle

    return OpenAIRoute


def _check_bearer(request: Request, expected: bytes) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guessed key was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise APIError(
            401,
            "Missing or wrong API key. Send 'Authorization: Bearer <key>' with the key "
            "this server was started with (--api-key).",
            type="authentication_error",
            code="invalid_api_key",
        )


def create_router(manager: ModelManager, api_key: str | None = None) -> APIRouter:
    """The /v1 routes over `manager`. With `api_key`, every route needs that bearer token."""
    router = APIRouter(route_class=_route_class(api_key))

    @router.get("/v1/models")
    async def list_models():
        backend = manager.backend
        data = [] if backend is None else [_model_card(manager, backend)]
        return {"object": "list", "data": data}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        return _model_card(manager, _backend_for(manager, model_id))

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request)
        backend = _backend_for(manager, model_name(body))
        req = chat_request(body, backend.info.n_experts)
        return await _complete(request, manager, backend, body, req, _ChatShape())

    @router.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        backend = _backend_for(manager, model_name(body))
        req = completion_request(body, backend.info.n_experts)
        return await _complete(request, manager, backend, body, req, _TextShape())

    @router.post("/tokenize")
    async def tokenize(request: Request):
        # vLLM's and llama.cpp's servers have this beside /v1 (one reads "prompt", the
        # other "content"); the remote backend uses it to count tokens.
        body = await _json_body(request)
        text = body.get("prompt", body.get("content"))
        if not isinstance(text, str):
            raise APIError(400, "'prompt' must be a string.", param="prompt", code="invalid_value")
        backend = _backend_for(manager, body.get("model") or None)
        tokens = await asyncio.to_thread(backend.tokenize, text)
        context = backend.info.context_length or None
        return {"tokens": tokens, "count": len(tokens), "max_model_len": context}

    return router


# -- the loaded model ------------------------------------------------------------------


def served_model_id(manager: ModelManager, backend: Backend) -> str:
    """The id clients pass as `model`: the model's name, else its file or folder name."""
    name = getattr(backend.info, "name", "")
    if name:
        return name
    source = manager.status.get("source") or str(backend.info.path)
    return source if "://" in source else Path(source).name


def _model_card(manager: ModelManager, backend: Backend) -> dict:
    info = backend.info
    return {
        "id": served_model_id(manager, backend),
        "object": "model",
        "created": 0,
        "owned_by": "itamae",
        # Beyond OpenAI's fields, for clients that size prompts (as vLLM's max_model_len).
        "max_model_len": info.context_length or None,
        "arch": info.arch,
    }


def _backend_for(manager: ModelManager, requested: str | None) -> Backend:
    backend = manager.backend
    if backend is None:
        status = manager.status
        if status["state"] == "loading":
            raise APIError(
                503,
                f"The model {status['source']} is still loading; try again shortly.",
                type="server_error",
                code="model_loading",
            )
        raise APIError(
            503,
            "No model is loaded on this server. Start it with --model PATH.",
            type="server_error",
            code="model_not_loaded",
        )
    served = served_model_id(manager, backend)
    if requested is not None and requested not in (served, manager.status.get("source")):
        raise APIError(
            404,
            f"The model {requested!r} does not exist here; this server serves {served!r}.",
            param="model",
            code="model_not_found",
        )
    return backend


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"The request body is not valid JSON: {e}.", code="invalid_json") from e
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _prompt_token_count(backend: Backend, req: GenerationRequest) -> tuple[int, bool]:
    """(tokens, exact): the prompt's length, or a lower bound from the message texts
    alone when the backend cannot render its chat template for us. (0, False) when the
    backend cannot count tokens at all (a remote server without /tokenize)."""
    try:
        return _count_prompt(backend, req)
    except ItamaeError:
        return 0, False


def _count_prompt(backend: Backend, req: GenerationRequest) -> tuple[int, bool]:
    if req.prompt is not None:
        return len(backend.tokenize(req.prompt)), True
    render = getattr(backend, "render_chat", None)
    if callable(render):
        return len(backend.tokenize(render(req.messages))), True
    return sum(len(backend.tokenize(m.content)) for m in req.messages), False


async def _fit_to_context(backend: Backend, req: GenerationRequest) -> None:
    """Refuse a prompt the context cannot hold; default max_tokens to what is left."""
    context = backend.info.context_length
    # In a worker thread: a long prompt takes a while to tokenize, a remote one a request.
    prompt_tokens, exact = await asyncio.to_thread(_prompt_token_count, backend, req)
    if context and prompt_tokens >= context:
        raise APIError(
            400,
            f"This model's context is {context} tokens, and the prompt is "
            f"{'' if exact else 'at least '}{prompt_tokens} tokens. Shorten the prompt.",
            param="messages" if req.messages is not None else "prompt",
            code="context_length_exceeded",
        )
    if req.sampling.max_tokens == 0:
        left = context - prompt_tokens if context else DEFAULT_MAX_TOKENS
        req.sampling.max_tokens = max(1, left)


# -- running one request ---------------------------------------------------------------


class _ClientGone(Exception):
    pass


class _EventPump:
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
                    raise _ClientGone() from None
                continue
            return None if item is self._END else item


async def _complete(request, manager, backend, body, req, shape) -> Response:
    stream, include_usage = stream_flags(body)
    await _fit_to_context(backend, req)
    pump = _EventPump(manager, req)
    ident = f"{shape.id_prefix}-{uuid.uuid4().hex}"
    created = int(time.time())
    model = served_model_id(manager, backend)
    try:
        # Wait for the first event before answering, so an error (a failed model, a
        # prompt the backend refuses) still gets a proper status code.
        first = await pump.next(request)
    except _ClientGone:
        return Response(status_code=499)
    if isinstance(first, FinalEvent) and first.finish_reason == "error":
        raise _generation_error(first)
    if not stream:
        return await _whole_response(request, pump, first, shape, ident, created, model)
    chunks = _sse(pump, first, shape, ident, created, model, include_usage)
    return StreamingResponse(
        chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _generation_error(final: FinalEvent) -> APIError:
    message = final.error or "The generation failed."
    exception = getattr(final, "exception", None)  # set by the manager if the backend raised
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
    event = first
    try:
        while not isinstance(event, FinalEvent):
            if event is None:
                raise APIError(500, "The backend ended without a final event.", type="server_error")
            pieces.append(event.text)
            event = await pump.next(request)
    except _ClientGone:
        return Response(status_code=499)
    if event.finish_reason == "error":
        raise _generation_error(event)
    choice = shape.whole_choice("".join(pieces), event.finish_reason)
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
            if event.text:
                yield chunk([shape.chunk_choice(shape.text_delta(event.text), None)])
            event = await pump.next()
        if event is None:
            event = FinalEvent("error", Stats(), error="The backend ended without a final event.")
        if event.finish_reason == "error":
            yield f"data: {json.dumps(_generation_error(event).body())}\n\n"
        else:
            yield chunk([shape.chunk_choice(shape.closing_delta, event.finish_reason)])
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


class _ChatShape:
    """chat.completion objects: the text sits in message / delta."""

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    opening_delta = {"role": "assistant", "content": ""}
    closing_delta: dict = {}

    @staticmethod
    def text_delta(text: str) -> dict:
        return {"content": text}

    @staticmethod
    def chunk_choice(delta: dict, finish_reason: str | None) -> dict:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def whole_choice(text: str, finish_reason: str) -> dict:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }


class _TextShape:
    """text_completion objects: the text sits in choices[].text, chunks and whole alike."""

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"
    opening_delta = None
    closing_delta = ""

    @staticmethod
    def text_delta(text: str) -> str:
        return text

    @staticmethod
    def chunk_choice(text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    whole_choice = chunk_choice
