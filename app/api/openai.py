"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /v1/completions.

Shapes follow OpenAI's API reference (chat.completion, chat.completion.chunk,
text_completion objects; server-sent events ending in `data: [DONE]`; errors as
{"error": {message, type, param, code}}), so the official `openai` client and the
tools built on it work unchanged. The same router serves `itamae serve` (headless)
and the app's own server beside the UI.

Every request goes through the shared `ModelManager`, which runs one generation at a
time and serves waiting requests in arrival order (app/api/stream.py runs one request;
app/api/schema.py validates bodies).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.api.fields import chat_request, completion_request
from app.api.schema import APIError, model_name, stream_flags
from app.api.stream import ChatShape, TextShape, respond
from app.library import passes_through
from app.model_manager import ModelManager
from converters.core.errors import ItamaeError
from engine.prompting import ReasoningSwitchError
from engine.types import Backend, GenerationRequest

log = logging.getLogger("itamae.api")

# When the body sets no max_tokens and the context length is unknown: enough for an
# answer, short enough that a forgotten limit does not tie a CPU up for minutes.
DEFAULT_MAX_TOKENS = 512
# The largest request body read. A 128k-token conversation is well under 2 MiB of text;
# the limit keeps a runaway client from filling the memory the model needs.
MAX_BODY_BYTES = 32 * 2**20
# Requests that may wait for the model at once; more get 429 (OpenAI's "slow down").
# Each waiting request holds a thread and a connection, so the queue must end somewhere.
DEFAULT_MAX_QUEUE = 64


def route_class(api_key: str | None, error_body=APIError.body) -> type[APIRoute]:
    """Routes that check the API key and answer APIError as JSON (OpenAI's shape, or the
    one `error_body(error)` makes for the Ollama and Anthropic surfaces).

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
                    return JSONResponse(error_body(e), status_code=e.status, headers=headers)
                except Exception as e:  # a bug: answer it in the API's own shape, keep serving
                    log.exception("API request failed")
                    error = APIError(
                        500, f"Internal error: {type(e).__name__}: {e}", type="server_error"
                    )
                    return JSONResponse(error_body(error), status_code=500)

            return handle

    return OpenAIRoute


def _check_bearer(request: Request, expected: bytes) -> None:
    """One rule for all three surfaces: `Authorization: Bearer <key>` (OpenAI, Ollama)
    or Anthropic's `x-api-key: <key>`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = request.headers.get("x-api-key", "")
    # compare_digest: the time taken must not tell how much of a guessed key was right.
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise APIError(
            401,
            "Missing or wrong API key. Send 'Authorization: Bearer <key>' (or 'x-api-key: "
            "<key>') with the key this server was started with (--api-key).",
            type="authentication_error",
            code="invalid_api_key",
        )


def create_router(
    manager: ModelManager, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE
) -> APIRouter:
    """The /v1 routes over `manager`. With `api_key`, every route needs that bearer token;
    past `max_queue` requests waiting for the model, new ones get 429."""
    router = APIRouter(route_class=route_class(api_key))

    async def run(request: Request, to_request, shape_type) -> Response:
        """One generation: the body read, the model found, the body turned into a
        request by `to_request` (which knows the model's expert count), then answered."""
        body = await json_body(request)
        backend = backend_for(manager, model_name(body))
        req = to_request(body, backend.info.n_experts)
        stream, include_usage = stream_flags(body)
        await admit(manager, backend, req, max_queue)
        model = served_model_id(manager, backend)
        shape = shape_type.for_request(req, opens_reasoning(backend, req))
        return await respond(
            request, manager, req, shape, model=model, stream=stream, include_usage=include_usage
        )

    @router.get("/v1/models")
    async def list_models():
        backend = manager.backend
        data = [] if backend is None else [_model_card(manager, backend)]
        return {"object": "list", "data": data}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        return _model_card(manager, backend_for(manager, model_id))

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, chat_request, ChatShape)

    @router.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, completion_request, TextShape)

    @router.post("/tokenize")
    async def tokenize(request: Request):
        # vLLM's and llama.cpp's servers have this beside /v1 (one reads "prompt", the
        # other "content"); the remote backend uses it to count tokens.
        body = await json_body(request)
        text = body.get("prompt", body.get("content"))
        if not isinstance(text, str):
            raise APIError(400, "'prompt' must be a string.", param="prompt", code="invalid_value")
        backend = backend_for(manager, body.get("model") or None)
        tokens = await asyncio.to_thread(backend.tokenize, text)
        context = backend.info.context_length or None
        return {"tokens": tokens, "count": len(tokens), "max_model_len": context}

    return router


async def admit(manager: ModelManager, backend: Backend, req: GenerationRequest, max_queue: int):
    """The checks every surface makes before a request waits for the model."""
    await check_request(backend, req)
    await fit_to_context(backend, req)
    if manager.queue_length >= max_queue:
        raise APIError(
            429,
            f"{manager.queue_length} requests are already waiting for the model; try again later.",
            type="rate_limit_error",
            code="queue_full",
        )


# -- the loaded model ------------------------------------------------------------------


def opens_reasoning(backend: Backend, req: GenerationRequest) -> bool:
    """Whether `req`'s prompt ends inside a <think> block (so the reply starts as
    reasoning); backends that render no prompt themselves (remote) say no."""
    plan = getattr(backend, "prompt_plan", None)
    return bool(req.messages is not None and plan is not None and plan(req).opens_reasoning)


def served_model_id(manager: ModelManager, backend: Backend) -> str:
    """The id clients pass as `model`: the model's name, else its file or folder name."""
    source = manager.status.source or str(backend.info.path)
    if not passes_through(source) or source == "demo":
        return source  # a library name (`itamae models`), the one the model was loaded by
    name = getattr(backend.info, "name", "")
    if name:
        return name
    return source if "://" in source else Path(source).name


def _model_card(manager: ModelManager, backend: Backend) -> dict:
    info = backend.info
    return {
        "id": served_model_id(manager, backend),
        "object": "model",
        "created": 0,
        "owned_by": "itamae",
        # Anthropic's model object, for its SDK's models.list()
        "type": "model",
        "display_name": served_model_id(manager, backend),
        "created_at": "1970-01-01T00:00:00Z",
        # Beyond OpenAI's fields, for clients that size prompts (as vLLM's max_model_len).
        "max_model_len": info.context_length or None,
        "arch": info.arch,
    }


def backend_for(manager: ModelManager, requested: str | None) -> Backend:
    backend = manager.backend
    if backend is None:
        status = manager.status
        if status.state == "loading":
            raise APIError(
                503,
                f"The model {status.source} is still loading; try again shortly.",
                type="server_error",
                code="model_loading",
            )
        raise APIError(
            503,
            "No model is loaded on this server. Load one in the Itamae app, or start "
            "`itamae serve --model PATH`.",
            type="server_error",
            code="model_not_loaded",
        )
    served = served_model_id(manager, backend)
    if requested is not None and requested not in (served, manager.status.source):
        raise APIError(
            404,
            f"The model {requested!r} does not exist here; this server serves {served!r}.",
            param="model",
            code="model_not_found",
        )
    return backend


async def json_body(request: Request) -> dict:
    raw = await _read_limited(request, MAX_BODY_BYTES)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"The request body is not valid JSON: {e}.", code="invalid_json") from e
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes, before all of it is in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"The request body is over {limit // 2**20} MiB.",
        code="request_too_large",
    )


def _prompt_token_count(backend: Backend, req: GenerationRequest) -> tuple[int, bool]:
    """(tokens, exact): the prompt's length, or a lower bound from the message texts
    alone when the backend cannot render its chat template for us. (0, False) when the
    backend cannot count tokens at all (a remote server without /tokenize)."""
    try:
        return _count_prompt(backend, req)
    except ItamaeError:
        return 0, False


def _count_prompt(backend: Backend, req: GenerationRequest) -> tuple[int, bool]:
    # Backends that can say exactly which tokens they will run (the llama.cpp backend's
    # prompt_tokens renders the chat template) give the exact count.
    exact = getattr(backend, "prompt_tokens", None)
    if callable(exact):
        return len(exact(req)), True
    if req.prompt is not None:
        return len(backend.tokenize(req.prompt)), True
    # tokenize() may add special tokens (BOS) to every text; count them once.
    specials = len(backend.tokenize(""))
    return sum(len(backend.tokenize(m.content)) - specials for m in req.messages), False


async def check_request(backend: Backend, req: GenerationRequest) -> None:
    """A 400 for what the backend cannot do for this request (a schema it cannot enforce,
    a tool choice its template cannot force), before the request waits for the model."""
    check = getattr(backend, "check_request", None)
    if check is None:
        if req.tools or req.constraint or req.sampling.logprobs is not None:
            raise APIError(
                400,
                "This backend does not support tools, response_format or logprobs.",
                code="unsupported_value",
            )
        return
    try:
        await asyncio.to_thread(check, req)
    except ReasoningSwitchError as e:
        raise APIError(400, str(e), param="reasoning_effort", code="unsupported_value") from e
    except ItamaeError as e:
        param = "response_format" if req.constraint is not None else "tool_choice"
        raise APIError(400, str(e), param=param, code="unsupported_value") from e


async def fit_to_context(backend: Backend, req: GenerationRequest) -> None:
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
