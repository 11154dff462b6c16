"""The generation loop: prompt -> (reused prefix) prefill -> streamed decode, with stats.

Prefill runs the prompt in chunks (one forward pass per chunk, batched over its tokens);
the KV cache of the previous request is reused up to the longest common prefix, so a chat
that grows by one turn only prefills the new turn. `cancel` is checked before every forward
pass, so a cancel takes effect within one token (or one prefill chunk).
Stats per generation: TTFT, prefill and decode tokens/s, expert_counts[moe_layer][expert]
for the tokens this request ran, and expert-cache hits, misses and bytes moved.
The prompt comes from engine/prompting.py (tools, a forced answer's opening); a constraint
(JSON schema) masks the logits through engine/constrained.py before the sampler runs, and
the answer ends when its JSON is complete.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import torch

from converters.core.errors import ContextTooLong, ItamaeError
from engine.constrained import JsonConstraint, tokenizer_for
from engine.prompting import PromptPlan, plan_prompt
from engine.text_stream import TextAssembler
from engine.types import Event, FinalEvent, GenerationRequest, Stats, TokenEvent

from .sampling import Sampler, token_logprob
from .text import ModelText

PREFILL_CHUNK = 512  # tokens per prefill forward pass: bounds activation memory


class Generator:
    def __init__(self, model, text: ModelText, context_length: int):
        self.model, self.text = model, text
        self.context_length = context_length
        self.kv = model.new_cache()
        self.cached_ids: list[int] = []  # the tokens whose keys/values are in self.kv
        self.cached_experts_per_token: int | None = None  # the routing those were made with
        self._guide_tokenizer = None  # llguidance's view of the tokenizer, made on first use

    def prompt_plan(self, req: GenerationRequest) -> PromptPlan:
        t = self.text
        return plan_prompt(t.chat_template, req, bos_token=t.bos_token, eos_token=t.eos_token)

    def encode(self, req: GenerationRequest, plan: PromptPlan) -> list[int]:
        """The prompt's tokens: a rendered chat without added BOS (the template writes
        it), a raw prompt with it."""
        if req.messages:
            return self.text.encode(plan.text, add_special_tokens=False)
        return self.text.encode(plan.text) if req.prompt is not None else []

    def prompt_ids(self, req: GenerationRequest, plan: PromptPlan | None = None) -> list[int]:
        ids = self.encode(req, plan or self.prompt_plan(req))
        if not ids:
            raise ItamaeError("The prompt is empty.", "Type a message first.")
        if len(ids) >= self.context_length:
            raise ContextTooLong(
                f"The prompt is {len(ids)} tokens; this model was loaded with a "
                f"{self.context_length}-token context.",
                "Start a new conversation or shorten it, or load the model with a larger "
                "context_length (up to the model's own maximum).",
            )
        return ids

    def _forward(self, ids: list[int]) -> torch.Tensor:
        logits = self.model.forward(torch.tensor([ids], dtype=torch.long), self.kv)
        self.cached_ids.extend(ids)
        return logits[0, -1]

    def _prefill(
        self, ids: list[int], cancel, experts_per_token
    ) -> tuple[torch.Tensor | None, int]:
        """Logits after the prompt, and how many tokens were actually run."""
        if experts_per_token != self.cached_experts_per_token:
            self.cached_ids.clear()  # keys/values made with other experts are not reusable
            self.cached_experts_per_token = experts_per_token
        keep = 0
        while keep < min(len(ids) - 1, len(self.cached_ids)) and ids[keep] == self.cached_ids[keep]:
            keep += 1
        keep = self.kv.truncate(keep)  # a recurrent state goes back to its last checkpoint
        del self.cached_ids[keep:]
        logits = None
        for at in range(keep, len(ids), PREFILL_CHUNK):
            if cancel is not None and cancel.is_set():
                return None, at - keep
            logits = self._forward(ids[at : at + PREFILL_CHUNK])
        self.kv.checkpoint()  # the prompt's end: where the next turn's prompt diverges
        return logits, len(ids) - keep

    def stream(
        self, req: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        started = time.perf_counter()
        try:
            plan = self.prompt_plan(req)
            prompt = self.prompt_ids(req, plan)
            self.model.set_experts_per_token(req.experts_per_token)
        except ItamaeError as e:
            yield FinalEvent("error", Stats(), error=str(e))
            return
        usage0 = self.model.usage.counts.clone()
        cache = self.model.cache
        counters0 = cache.counters.snapshot() if cache else None
        stats = Stats(prompt_tokens=len(prompt))
        try:
            yield from self._generate(req, plan, prompt, cancel, stats, started, usage0, counters0)
        except (ItamaeError, RuntimeError, MemoryError) as e:
            # a failed forward pass leaves the KV cache half written: start clean next time
            self.cached_ids.clear()
            self.kv.truncate(0)
            yield FinalEvent(
                "error", stats, error=f"Generation failed: {e}", prompt_token_ids=prompt
            )

    def _guide(self, plan: PromptPlan, n_logits: int) -> JsonConstraint | None:
        if plan.constraint is None:
            return None
        if self._guide_tokenizer is None:
            tokenizer = self.text.tokenizer.to_str()
            self._guide_tokenizer = tokenizer_for(tokenizer, n_logits, self.text.eos_ids)
        return JsonConstraint(self._guide_tokenizer, plan.constraint, self.special_token_id)

    def special_token_id(self, text: str) -> int | None:
        """The id of `text` as one added (special) token of the vocabulary, else None."""
        added = self.text.tokenizer.get_added_tokens_decoder()
        return next((i for i, t in added.items() if t.content == text), None)

    def _piece(self, token: int) -> bytes:
        # a token that holds part of a UTF-8 character decodes to U+FFFD here
        return self.text.tokenizer.decode([token], skip_special_tokens=False).encode()

    def _generate(self, req, plan, prompt, cancel, stats, started, usage0, counters0):
        logits, ran = self._prefill(prompt, cancel, req.experts_per_token)
        prefill_s = time.perf_counter() - started
        stats.prefill_tps = ran / prefill_s if prefill_s > 0 else 0.0
        params = req.sampling
        sampler, out = Sampler(params), TextAssembler(params.stop, self.text.stream())
        guide = self._guide(plan, logits.numel()) if logits is not None else None
        completion: list[int] = []
        budget = min(params.max_tokens, self.context_length - len(prompt))
        finish, first_at = "length", None
        if plan.prefix:
            yield TokenEvent(plan.prefix, None)
        while logits is not None:
            allowed = guide.allowed(logits.numel()) if guide is not None else None
            token = sampler(logits, prompt + completion, allowed)
            if first_at is None:
                first_at = time.perf_counter()
                stats.ttft_s = first_at - started
            if token in self.text.eos_ids and not params.ignore_eos:
                finish = "stop"
                break
            logprob = None
            if params.logprobs is not None:
                logprob = token_logprob(logits, token, params.logprobs, self._piece)
            if guide is not None:
                guide.accept(token)
            completion.append(token)
            piece = out.push(token)
            if piece or logprob is not None:
                yield TokenEvent(piece, token, logprob)
            if out.stopped or (guide is not None and guide.finished):
                finish = "stop"
                break
            if len(completion) >= budget:
                break
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            logits = self._forward([token])
        if logits is None:
            finish = "cancelled"
        self.kv.checkpoint()  # the reply's end: the next turn continues from here
        tail = out.finish()
        if tail:
            yield TokenEvent(tail, None)
        self._finish_stats(stats, completion, first_at, usage0, counters0)
        raw = plan.prefix + self.text.tokenizer.decode(completion, skip_special_tokens=False)
        content, calls = plan.read_reply(raw)
        stop = out.stop_string
        yield FinalEvent(
            finish,
            stats,
            prompt_token_ids=prompt,
            token_ids=completion,
            tool_calls=calls,
            content=content,
            stop_sequence=stop,
        )

    def _finish_stats(self, stats: Stats, completion, first_at, usage0, counters0) -> None:
        stats.completion_tokens = len(completion)
        if first_at is not None and len(completion) > 1:
            # forward passes after the first token, over the time they took
            stats.decode_tps = (len(completion) - 1) / max(time.perf_counter() - first_at, 1e-9)
        if self.model.moe_layers:
            stats.expert_counts = (self.model.usage.counts - usage0).tolist()
        cache = self.model.cache
        if cache is not None:
            c = cache.counters
            stats.cache_hits = c.hits - counters0.hits
            stats.cache_misses = c.misses - counters0.misses
            stats.bytes_moved = c.bytes_moved - counters0.bytes_moved
