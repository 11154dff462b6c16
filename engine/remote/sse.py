"""Reading an OpenAI-style answer into engine events: server-sent events as OpenAI's
streaming reference describes them (`data: {json}` lines, `data: [DONE]` at the end,
the usage in a last chunk with no choices), or one whole object from a server that
does not stream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx

from converters.core.errors import ItamaeError
from engine.reasoning import THINK_CLOSE, THINK_OPEN
from engine.types import Event, FinalEvent, Stats, TokenEvent

# Servers that split a reply's reasoning from its answer send it beside `content`:
# DeepSeek's API, llama.cpp's server and Itamae as `reasoning_content`, vLLM and
# OpenRouter as `reasoning`. The engines' events are reply text, which the chat tab, the
# terminal and the APIs split at <think> tags (engine.reasoning), so the remote backend
# puts the server's reasoning back between those tags instead of dropping it.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def reasoning_of(part: dict) -> str:
    for name in REASONING_FIELDS:
        if isinstance(part.get(name), str):
            return part[name]
    return ""


class ReasoningTags:
    """Reasoning and content pieces as one reply text, the reasoning inside <think>."""

    def __init__(self) -> None:
        self.inside = False

    def text(self, reasoning: str, content: str) -> str:
        out = ""
        if reasoning:
            out += reasoning if self.inside else THINK_OPEN + reasoning
            self.inside = True
        if content:
            out += THINK_CLOSE + content if self.inside else content
            self.inside = False
        return out


def message_of(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def read_stream(
    response: httpx.Response, chat: bool, cancel: threading.Event, started: float
) -> Iterator[Event]:
    """TokenEvents from an SSE stream, then one FinalEvent with the server's usage."""
    # A blocked read does not look at `cancel`; closing the response from a watcher
    # thread ends that read at once (and tells the server its client went away).
    stop_watching = threading.Event()

    def watch() -> None:
        while not stop_watching.wait(0.05):
            if cancel.is_set():
                response.close()
                return

    threading.Thread(target=watch, name="itamae-remote-cancel", daemon=True).start()
    stats = Stats()
    first_token_at = None
    finish_reason = None
    pieces = 0
    done = False
    tags = ReasoningTags()
    try:
        for data in _sse_data(response):
            if cancel.is_set():
                break
            if data is None:
                done = True
                break
            if "error" in data:
                yield FinalEvent("error", stats, error=message_of(data["error"]))
                return
            usage = data.get("usage")
            if usage:
                stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                stats.completion_tokens = int(usage.get("completion_tokens") or 0)
            for choice in data.get("choices") or []:
                if chat:
                    delta = choice.get("delta") or {}
                    text = tags.text(reasoning_of(delta), delta.get("content") or "")
                else:
                    text = choice.get("text")
                if text:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    pieces += 1
                    yield TokenEvent(text)
                finish_reason = choice.get("finish_reason") or finish_reason
    except httpx.HTTPError:
        if not cancel.is_set():
            raise
    finally:
        stop_watching.set()
    if cancel.is_set():
        yield FinalEvent("cancelled", stats)
        return
    if not done and finish_reason is None:
        error = "The model server closed the stream before the answer ended."
        yield FinalEvent("error", stats, error=error)
        return
    _fill_speeds(stats, started, first_token_at, time.perf_counter(), pieces)
    yield FinalEvent(finish_reason if finish_reason in ("stop", "length") else "stop", stats)


def _sse_data(response: httpx.Response) -> Iterator[dict | None]:
    """The JSON objects of `data:` lines; None for `data: [DONE]`, the end."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event names
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            yield None
            return
        try:
            yield json.loads(payload)
        except json.JSONDecodeError as e:
            raise ItamaeError(f"The server sent a malformed event: {payload[:200]!r}") from e


def _fill_speeds(stats: Stats, started: float, first: float | None, ended: float, pieces: int):
    if not stats.completion_tokens:
        stats.completion_tokens = pieces  # servers without usage: one piece per token, about
    if first is None:
        return
    stats.ttft_s = first - started
    if stats.prompt_tokens and stats.ttft_s > 0:
        stats.prefill_tps = stats.prompt_tokens / stats.ttft_s
    if stats.completion_tokens > 1 and ended > first:
        stats.decode_tps = (stats.completion_tokens - 1) / (ended - first)


def read_whole(data: dict, chat: bool, started: float) -> Iterator[Event]:
    """The events of a non-streamed answer (chat.completion or text_completion)."""
    if "error" in data:
        yield FinalEvent("error", Stats(), error=message_of(data["error"]))
        return
    choice = (data.get("choices") or [{}])[0]
    if chat:
        message = choice.get("message") or {}
        text = ReasoningTags().text(reasoning_of(message), message.get("content") or "")
    else:
        text = choice.get("text")
    now = time.perf_counter()
    if text:
        yield TokenEvent(text)
    usage = data.get("usage") or {}
    stats = Stats(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )
    _fill_speeds(stats, started, now if text else None, now, 1 if text else 0)
    reason = choice.get("finish_reason")
    yield FinalEvent(reason if reason in ("stop", "length") else "stop", stats)
