"""SamplingParams as a llama.cpp sampler chain.

The order is llama.cpp's own (common/sampling.cpp: logit_bias first, then
`common_params_sampling.samplers`): logit_bias, penalties, the grammar (constrained
decoding; it only removes tokens, so it commutes with the two before it), top-k, top-p,
min-p, temperature, then a seeded draw. engine/torch/sampling.py follows the same order.
Temperature 0 means greedy after the penalties. The penalties see the last 64 tokens
(llama.cpp's `repeat_last_n` default), prompt included, as Hugging Face's
RepetitionPenaltyLogitsProcessor sees the whole input.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from converters.core.errors import ItamaeError
from engine.types import SamplingParams, TokenLogprob

REPEAT_LAST_N = 64


class SamplerChain:
    """Owns one llama_sampler chain; free it with close() (or use as a context manager).

    `grammar` is GBNF text (engine/llamacpp/grammar.py) and needs `vocab`."""

    def __init__(
        self,
        params: SamplingParams,
        n_vocab: int,
        recent_tokens: list[int],
        *,
        grammar: str | None = None,
        vocab=None,
    ):
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.chain = llama_cpp.llama_sampler_chain_init(chain_params)
        if params.logit_bias:
            self._add(_logit_bias(params.logit_bias, n_vocab))
        penalties = (
            params.repeat_penalty or 1.0,
            params.frequency_penalty,
            params.presence_penalty,
        )
        if penalties != (1.0, 0.0, 0.0):
            self._add(llama_cpp.llama_sampler_init_penalties(n_vocab, REPEAT_LAST_N, *penalties))
        # The penalties learn the context before the grammar joins: the grammar must only
        # see the tokens generated from here on.
        for token in recent_tokens[-REPEAT_LAST_N:]:
            llama_cpp.llama_sampler_accept(self.chain, token)
        if grammar is not None:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not sampler:
                self.close()
                raise ItamaeError(
                    "llama.cpp could not compile the output grammar.",
                    "Simplify the JSON schema (see the server log for the grammar error).",
                )
            self._add(sampler)
        self._add_draw(params)

    def _add(self, sampler) -> None:
        llama_cpp.llama_sampler_chain_add(self.chain, sampler)

    def _add_draw(self, params: SamplingParams) -> None:
        if params.temperature is None or params.temperature <= 0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k and params.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(int(params.top_k)))
        if params.top_p is not None and 0 < params.top_p < 1:
            self._add(llama_cpp.llama_sampler_init_top_p(float(params.top_p), 1))
        if params.min_p and params.min_p > 0:
            self._add(llama_cpp.llama_sampler_init_min_p(float(params.min_p), 1))
        self._add(llama_cpp.llama_sampler_init_temp(float(params.temperature)))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
        self._add(llama_cpp.llama_sampler_init_dist(int(seed) & 0xFFFFFFFF))

    def sample(self, native) -> int:
        """Draw from the last decoded position's logits (a NativeModel) and record the token."""
        return native.sample(self.chain)

    def sample_logits(self, logits) -> int:
        """Draw from a given row of logits (a sequence of n_vocab floats) and record it:
        the chain without a model, as the sampler agreement test drives it."""
        n = len(logits)
        data = (llama_cpp.llama_token_data * n)()
        for i, value in enumerate(logits):
            data[i].id, data[i].logit, data[i].p = i, float(value), 0.0
        array = llama_cpp.llama_token_data_array(data, n, -1, False)
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        token = array.data[array.selected].id  # samplers may sort or swap the buffer
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __enter__(self) -> SamplerChain:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _logit_bias(bias: dict[int, float], n_vocab: int):
    entries = [(t, b) for t, b in bias.items() if 0 <= t < n_vocab]
    array = (llama_cpp.llama_logit_bias * len(entries))()
    for i, (token, value) in enumerate(entries):
        array[i].token, array[i].bias = token, float(value)
    # llama.cpp copies the entries into the sampler, so `array` may go after this call.
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(entries), array)


def token_logprob(native, token: int, top: int) -> TokenLogprob:
    """The model's own log-probability of `token` at the last decoded position, and of
    the `top` likeliest tokens there (log-softmax of the logits, before any sampler)."""
    logits = native.last_logits().astype(np.float64)
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    best = np.argsort(-logprobs, kind="stable")[:top] if top else []
    alternatives = [(int(i), native.piece(int(i), True), float(logprobs[i])) for i in best]
    return TokenLogprob(token, native.piece(token, True), float(logprobs[token]), alternatives)
