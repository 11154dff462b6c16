"""OpenAI response pieces beyond text: logprobs objects and tool calls, whole and streamed.

Shapes from OpenAI's API reference: chat `logprobs.content[]` entries {token, logprob,
bytes, top_logprobs[]}; completions' legacy {tokens, token_logprobs, top_logprobs,
text_offset}; `message.tool_calls[]` {id, type: "function", function: {name, arguments}}
and, streamed, `delta.tool_calls[]` with an `index`, the id and name in a call's first
delta and its arguments in pieces after it, which the openai client joins.
"""

from __future__ import annotations

from engine.types import TokenLogprob, ToolCall

# arguments per streamed delta: small enough that a client sees the call grow
ARGUMENT_PIECE_CHARS = 16


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprob_entry(lp: TokenLogprob) -> dict:
    return {
        "token": _text(lp.piece),
        "logprob": lp.logprob,
        "bytes": list(lp.piece),
        "top_logprobs": [
            {"token": _text(piece), "logprob": value, "bytes": list(piece)}
            for _, piece, value in lp.top
        ],
    }


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict | None:
    if entries is None:
        return None
    return {"content": [chat_logprob_entry(lp) for lp in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
    if entries is None:
        return None
    offsets, at = [], offset
    for lp in entries:
        offsets.append(at)
        at += len(_text(lp.piece))
    return {
        "tokens": [_text(lp.piece) for lp in entries],
        "token_logprobs": [lp.logprob for lp in entries],
        "top_logprobs": [{_text(p): v for _, p, v in lp.top} for lp in entries],
        "text_offset": offsets,
    }


def tool_call_objects(calls: list[ToolCall]) -> list[dict]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def tool_call_deltas(calls: list[ToolCall]) -> list[dict]:
    """The `delta`s that stream `calls`: per call, its id and name, then its arguments."""
    deltas = []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call.id, "type": "function"}
        deltas.append({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]})
        for at in range(0, len(call.arguments), ARGUMENT_PIECE_CHARS):
            piece = call.arguments[at : at + ARGUMENT_PIECE_CHARS]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas
