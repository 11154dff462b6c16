"""What the Ollama and Anthropic surfaces share with the OpenAI one: the same model lookup,
admission checks (context, queue), fair queue and cancellation on disconnect (through
app/api_stream.py's EventPump), only their own shapes on the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from app.api.openai import DEFAULT_MAX_QUEUE, admit, backend_for
from app.api.schema import APIError
from app.api.stream import EventPump, failure
from app.model_manager import ModelManager
from engine.types import Backend, FinalEvent, Stats, TokenEvent, TokenLogprob

__all__ = ["DEFAULT_MAX_QUEUE", "Reply", "backend_for", "run_whole", "run_stream", "start"]


@dataclass
class Reply:
    text: str
    final: FinalEvent
    logprobs: list[TokenLogprob] = field(default_factory=list)


async def start(request: Request, manager: ModelManager, backend: Backend, req, max_queue: int):
    """Admit and queue `req`; (pump, first event). Raises ClientGone or APIError."""
    await admit(manager, backend, req, max_queue)
    pump = EventPump(manager, req)
    first = await pump.next(request)
    if isinstance(first, FinalEvent) and failure(first) is not None:
        raise failure(first)
    return pump, first


async def run_whole(request: Request, pump: EventPump, first) -> Reply:
    pieces, logprobs, event = [], [], first
    while not isinstance(event, FinalEvent):
        if event is None:
            raise APIError(500, "The backend ended without a final event.", type="server_error")
        pieces.append(event.text)
        if event.logprob is not None:
            logprobs.append(event.logprob)
        event = await pump.next(request)
    if failure(event) is not None:
        raise failure(event)
    return Reply("".join(pieces), event, logprobs)


async def run_stream(pump: EventPump, first) -> AsyncIterator[TokenEvent | FinalEvent]:
    """The events; the last is a FinalEvent (an error one if the backend ended early).
    Leaving the loop (a client that went away) cancels the generation."""
    try:
        event = first
        while isinstance(event, TokenEvent):
            yield event
            event = await pump.next()
        if event is None:
            event = FinalEvent("error", Stats(), error="The backend ended early.")
        yield event
    finally:
        pump.cancel.set()
