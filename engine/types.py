"""The small, typed interface between the app and every backend (see DESIGN.md, "Interfaces"),
and the scorer interface the quality report (engine/evaluate.py) reads each backend through.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import numpy as np

from converters.core.model_info import ModelInfo

FinishReason = Literal["stop", "length", "cancelled", "error"]


# Both engines report logprobs from the model's own distribution (log-softmax of its
# logits before any sampler), as llama.cpp's server and vLLM do by default.
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs


@dataclass
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repeat_penalty: float = 1.0  # 1.0 = off
    presence_penalty: float = 0.0  # OpenAI's: minus this once for every token already seen
    frequency_penalty: float = 0.0  # OpenAI's: minus this times the token's count so far
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    logprobs: int | None = None  # None = off; N = the chosen token's logprob and the N likeliest
    seed: int | None = None
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks: a fixed length)


@dataclass
class ToolCall:
    """One function call the model made: arguments as the JSON text it wrote."""

    name: str
    arguments: str
    id: str = ""


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)  # an assistant's calls
    tool_call_id: str = ""  # a tool result: the call it answers
    name: str = ""  # a tool result: the function's name


@dataclass
class OutputConstraint:
    """What the output must be, enforced token by token (constrained decoding).

    `prefix` is text the answer starts with, written into the prompt after the generation
    prompt (a tool call's opening markup); what the model writes after it must be JSON
    matching `json_schema` (an empty schema: any JSON object), or, with `sequences`, one
    of those sequences of parts: ("text", literal), ("token", a special token's text,
    matched as that token where the vocabulary has it, else as text), ("json", schema),
    ("raw", max length or None: text without "<", a bare XML argument value), ("oneof",
    [literal, ...]). Generation
    ends when the output is complete.
    """

    json_schema: dict = field(default_factory=dict)
    prefix: str = ""
    sequences: list[list[tuple[str, object]]] = field(default_factory=list)


@dataclass
class GenerationRequest:
    """Either `messages` (rendered with the model's chat template) or a raw `prompt`."""

    messages: list[Message] | None = None
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    experts_per_token: int | None = None  # None = the model's own top-k
    tools: list[dict] | None = None  # OpenAI-style function tools, given to the chat template
    # "auto" (the model decides), "required" (some call), "function" (a call of
    # `tool_name`); the last two are forced by constrained decoding
    tool_choice: Literal["auto", "required", "function"] = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool = True  # False: only the reply's first call is returned
    # given to the chat template as `enable_thinking` (Qwen3, GLM-4.5, DeepSeek V3.1 and
    # llama.cpp's server use that name); None leaves the template's default
    enable_thinking: bool | None = None
    # given to the chat template as `reasoning_effort` (gpt-oss's Harmony system message:
    # low | medium | high); None leaves the template's default
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    constraint: OutputConstraint | None = None  # structured output (response_format)


@dataclass
class TokenLogprob:
    """One generated token's logprob and the likeliest alternatives at its position."""

    token_id: int
    piece: bytes  # the token's text as bytes (a piece may hold part of a UTF-8 character)
    logprob: float
    top: list[tuple[int, bytes, float]] = field(default_factory=list)  # best first


@dataclass
class TokenEvent:
    text: str
    token_id: int | None = None
    logprob: TokenLogprob | None = None  # when SamplingParams.logprobs asked for them


@dataclass
class Stats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    prefill_tps: float = 0.0
    decode_tps: float = 0.0
    # expert_counts[moe_layer][expert]: how many tokens each routed expert worked on
    expert_counts: list[list[int]] | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    bytes_moved: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FinalEvent:
    finish_reason: FinishReason
    stats: Stats
    error: str | None = None  # the message a person sees when finish_reason == "error"
    prompt_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    # when the request offered tools: the calls the model made, and its reply without them
    tool_calls: list[ToolCall] = field(default_factory=list)
    content: str | None = None
    stop_sequence: str | None = None  # the stop string that ended the reply, if one did


Event = TokenEvent | FinalEvent


class Backend(Protocol):
    info: ModelInfo

    def stream(
        self, req: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def close(self) -> None: ...


@dataclass
class Scored:
    logits: np.ndarray  # [T, V] float32, position t predicts token t+1
    # MoE layer index (0-based over all layers) -> experts chosen per token [T, K] int
    routing: dict[int, np.ndarray] = field(default_factory=dict)


class Scorer(Protocol):
    """A model run over a token window, handing out what the chat `Backend` does not: every
    position's logits and the experts each token was routed to. One per local backend
    (engine/<name>/scorer.py), opened by engine.scoring.open_scorer."""

    name: str  # "llama.cpp" | "torch"
    compute: str  # how it computes, in words (dtype, cache), for the report
    vocab_size: int
    context_length: int
    moe_layers: list[int]  # layer indices whose routing `score` reports ([] for a dense model)
    routing_note: str  # why routing is not reported although the model routes, or ""

    def tokenize(self, text: str, add_special: bool) -> list[int]: ...

    def score(self, tokens: list[int]) -> Scored: ...

    def close(self) -> None: ...
