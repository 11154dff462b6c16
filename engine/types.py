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


@dataclass
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repeat_penalty: float = 1.0  # 1.0 = off
    seed: int | None = None
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks: a fixed length)


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass
class GenerationRequest:
    """Either `messages` (rendered with the model's chat template) or a raw `prompt`."""

    messages: list[Message] | None = None
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    experts_per_token: int | None = None  # None = the model's own top-k
    # given to the chat template as `enable_thinking` (Qwen3, DeepSeek V3.1 and llama.cpp's
    # server use that name); None leaves the template's default
    enable_thinking: bool | None = None

    def template_options(self) -> dict:
        """What the chat template is given beside the messages."""
        return {} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}


@dataclass
class TokenEvent:
    text: str
    token_id: int | None = None


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
