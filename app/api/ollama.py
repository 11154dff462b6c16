"""The Ollama-compatible API on the same server: /api/version, /api/tags, /api/show,
/api/ps, /api/chat and /api/generate, so `itamae serve --port 11434` stands in for Ollama.

Shapes follow Ollama's docs/api.md: NDJSON streams (one JSON object a line, `done: true`
on the last, which carries done_reason and the counts and durations in nanoseconds),
streaming on by default; `options` (num_predict, num_ctx, temperature, top_p, top_k,
min_p, seed, stop, repeat_penalty, presence_penalty, frequency_penalty); `format` as
"json" or a JSON schema; `tools` in chat with calls returned as
message.tool_calls[].function {name, arguments (an object)}; `think`: given to the
template as `enable_thinking`, the reasoning apart in message.thinking (false also hides
reasoning a template cannot turn off); `logprobs`/`top_logprobs` as Ollama's per-chunk `logprobs` list.
Errors are {"error": message}. Models are named as Ollama lists them,
NAME:TAG (`demo:latest`).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app import __version__
from app.api import ollama_request as request_body
from app.api.fields import tools as openai_tools
from app.api.openai import json_body, opens_reasoning, route_class, served_model_id
from app.api.openai_out import chat_logprob_entry
from app.api.schema import APIError, bad_param, chat_messages, refuse_unknown
from app.api.stream import ClientGone
from app.api.surface import DEFAULT_MAX_QUEUE, backend_for, run_stream, run_whole, start
from app.model_manager import ModelManager
from engine.reasoning import ReasoningStream, split_reasoning
from engine.types import FinalEvent, GenerationRequest

OLLAMA_VERSION = "0.12.0"  # the Ollama API version these shapes follow


def _error_body(error: APIError) -> dict:
    return {"error": error.message}


def _name(model_id: str) -> str:
    return model_id if ":" in model_id else f"{model_id}:latest"


def _details(backend) -> dict:
    info = backend.info
    return {
        "parent_model": "",
        "format": "gguf" if info.format == "gguf" else "safetensors",
        "family": info.arch,
        "families": [info.arch],
        "parameter_size": f"{info.total_params / 1e9:.2f}B" if info.total_params else "",
        "quantization_level": info.quant or "",
    }


def _entry(manager, backend) -> dict:
    name = _name(served_model_id(manager, backend))
    return {
        "name": name,
        "model": name,
        "modified_at": datetime.now(timezone.utc).isoformat(),
        "size": backend.info.size_bytes or 0,
        "digest": "",
        "details": _details(backend),
    }


def _backend(manager, requested) -> object:
    if not isinstance(requested, str) or not requested:
        raise bad_param("model", "'model' is required: a name listed by GET /api/tags.")
    backend = backend_for(manager, None)
    served = served_model_id(manager, backend)
    if requested not in (served, _name(served), manager.status.source):
        raise APIError(404, f"model '{requested}' not found", param="model")
    return backend


def _final_fields(final: FinalEvent, started: float) -> dict:
    s = final.stats
    ns = 1e9
    eval_s = s.completion_tokens / s.decode_tps if s.decode_tps else 0.0
    return {
        "done": True,
        "done_reason": "length" if final.finish_reason == "length" else "stop",
        "total_duration": int((time.perf_counter() - started) * ns),
        "load_duration": 0,
        "prompt_eval_count": s.prompt_tokens,
        "prompt_eval_duration": int(s.ttft_s * ns),
        "eval_count": s.completion_tokens,
        "eval_duration": int(eval_s * ns),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _chat_message(text: str, final: FinalEvent | None, think) -> dict:
    message = {"role": "assistant", "content": text}
    if final is not None and final.content is not None:  # tools were offered
        message["content"] = final.content
        if final.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                for c in final.tool_calls
            ]
    if think is not None:
        parts = split_reasoning(message["content"])
        message["content"] = parts.answer
        if think:
            message["thinking"] = parts.thinking or ""
    return message


def ollama_router(
    manager: ModelManager, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE
) -> APIRouter:
    router = APIRouter(route_class=route_class(api_key, _error_body))

    @router.get("/api/version")
    async def version():
        return {"version": OLLAMA_VERSION, "itamae": __version__}

    @router.get("/api/tags")
    async def tags():
        backend = manager.backend
        return {"models": [] if backend is None else [_entry(manager, backend)]}

    @router.get("/api/ps")
    async def ps():
        backend = manager.backend
        if backend is None:
            return {"models": []}
        entry = _entry(manager, backend)
        entry.update(expires_at="9999-12-31T00:00:00Z", size_vram=0)
        return {"models": [entry]}

    @router.post("/api/show")
    async def show(request: Request):
        body = await json_body(request)
        backend = _backend(manager, body.get("model") or body.get("name"))
        info = backend.info
        capabilities = ["completion", "tools"]
        template = getattr(backend, "chat_template", "") or getattr(
            getattr(backend, "text", None), "chat_template", ""
        )
        return {
            "modelfile": "",
            "parameters": "",
            "template": template,
            "details": _details(backend),
            "model_info": {
                "general.architecture": info.arch,
                "general.parameter_count": info.total_params,
                f"{info.arch}.context_length": info.context_length,
                f"{info.arch}.expert_count": info.n_experts,
                f"{info.arch}.expert_used_count": info.experts_per_token,
            },
            "capabilities": capabilities,
            "modified_at": _now(),
        }

    async def run(request, backend, body, req, message_of, piece_of) -> Response:
        """`message_of(text, final)`: the fields of a whole reply; `piece_of(answer,
        thinking)`: those of a streamed piece of it, once split."""
        started = time.perf_counter()
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise bad_param("stream", "'stream' must be true or false.")
        # tool calls are read from the whole reply: such a stream sends it at the end
        hold = bool(req.tools)
        # with `think`, each piece is split into thinking and answer as it streams
        split = None
        if body.get("think") is not None and not hold:
            split = (ReasoningStream(opens_reasoning(backend, req)), piece_of)
        model = _name(served_model_id(manager, backend))
        try:
            pump, first = await start(request, manager, backend, req, max_queue)
            if not stream:
                reply = await run_whole(request, pump, first)
                return JSONResponse(
                    {
                        "model": model,
                        "created_at": _now(),
                        **message_of(reply.text, reply.final),
                        **_logprobs(reply.logprobs, req),
                        **_final_fields(reply.final, started),
                    }
                )
        except ClientGone:
            return Response(status_code=499)
        return StreamingResponse(
            _ndjson(pump, first, model, message_of, started, hold, req, split),
            media_type="application/x-ndjson",
        )

    @router.post("/api/chat")
    async def chat(request: Request):
        body = await json_body(request)
        refuse_unknown(body, request_body.CHAT_FIELDS)
        request_body.check_keep_alive(body)
        backend = _backend(manager, body.get("model"))
        request_body.check_num_ctx(body, backend)
        req = GenerationRequest(
            messages=request_body.messages(body.get("messages")),
            sampling=request_body.sampling(body),
            tools=openai_tools(body),
            constraint=request_body.output_format(body),
        )
        think = body.get("think")
        request_body.apply_think(think, req)
        def piece_of(answer: str, thinking: str) -> dict:
            message = {"role": "assistant", "content": answer}
            if think:
                message["thinking"] = thinking
            return {"message": message}

        return await run(
            request,
            backend,
            body,
            req,
            lambda text, final: {"message": _chat_message(text, final, think)},
            piece_of,
        )

    @router.post("/api/generate")
    async def generate(request: Request):
        body = await json_body(request)
        refuse_unknown(body, request_body.GENERATE_FIELDS)
        request_body.check_keep_alive(body)
        backend = _backend(manager, body.get("model"))
        request_body.check_num_ctx(body, backend)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise bad_param("prompt", "'prompt' must be a string.")
        if body.get("raw"):
            req = GenerationRequest(prompt=prompt)
        else:
            system = body.get("system")
            turns = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            req = GenerationRequest(messages=chat_messages({"messages": turns}))
        req.sampling, req.constraint = request_body.sampling(body), request_body.output_format(body)
        think = body.get("think")
        request_body.apply_think(think, req)

        def piece_of(answer: str, thinking: str) -> dict:
            return {"response": answer, **({"thinking": thinking} if think else {})}

        def response_of(text, final):
            if think is None:
                return {"response": text}
            parts = split_reasoning(text)
            return piece_of(parts.answer, parts.thinking or "")

        return await run(request, backend, body, req, response_of, piece_of)

    return router


def _logprobs(entries, req: GenerationRequest) -> dict:
    if req.sampling.logprobs is None:
        return {}
    return {"logprobs": [chat_logprob_entry(lp) for lp in entries]}


async def _ndjson(pump, first, model, message_of, started, hold, req, split=None):
    """One JSON line per token (or, when `hold`, the whole reply at its end), then the
    `done` line. `split`: (ReasoningStream, piece_of) when thinking and answer stream apart;
    a piece that is only part of a tag waits for the rest of it."""
    held = []
    async for event in run_stream(pump, first):
        if isinstance(event, FinalEvent):
            if event.finish_reason not in ("stop", "length"):
                yield json.dumps({"error": event.error or "The generation was interrupted."}) + "\n"
                return
            if hold:
                last = message_of("".join(held), event)
            elif split:
                thinking, answer = split[0].flush()
                last = split[1](answer, thinking)
            else:
                last = message_of("", None)
            line = {"model": model, "created_at": _now(), **last, **_final_fields(event, started)}
            yield json.dumps(line, ensure_ascii=False) + "\n"
            return
        if hold:
            held.append(event.text)
        elif event.text or event.logprob is not None:
            if split:
                thinking, answer = split[0].feed(event.text)
                if not (thinking or answer or event.logprob):
                    continue  # a tag still arriving
                fields = split[1](answer, thinking)
            else:
                fields = message_of(event.text, None)
            line = {
                "model": model,
                "created_at": _now(),
                **fields,
                **_logprobs([event.logprob] if event.logprob else [], req),
                "done": False,
            }
            yield json.dumps(line, ensure_ascii=False) + "\n"
