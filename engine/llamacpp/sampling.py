"""SamplingParams as a llama.cpp sampler chain.

The order is llama.cpp's own default (common/common.h `common_params_sampling.samplers`):
penalties, top-k, top-p, min-p, temperature, then a seeded draw. Temperature 0 means
greedy. The repetition penalty sees the last 64 tokens (llama.cpp's `repeat_last_n`
default), prompt included, as Hugging Face's RepetitionPenaltyLogitsProcessor sees the
whole input.
"""

from __future__ import annotations

import llama_cpp

from engine.types import SamplingParams

REPEAT_LAST_N = 64


class SamplerChain:
    """Owns one llama_sampler chain; free it with close() (or use as a context manager)."""

    def __init__(self, params: SamplingParams, n_vocab: int, recent_tokens: list[int]):
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.chain = llama_cpp.llama_sampler_chain_init(chain_params)
        add = lambda sampler: llama_cpp.llama_sampler_chain_add(self.chain, sampler)  # noqa: E731
        if params.repeat_penalty and params.repeat_penalty != 1.0:
            penalty = float(params.repeat_penalty)
            add(llama_cpp.llama_sampler_init_penalties(n_vocab, REPEAT_LAST_N, penalty, 0.0, 0.0))
        if params.temperature is None or params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k and params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(int(params.top_k)))
            if params.top_p is not None and 0 < params.top_p < 1:
                add(llama_cpp.llama_sampler_init_top_p(float(params.top_p), 1))
            if params.min_p and params.min_p > 0:
                add(llama_cpp.llama_sampler_init_min_p(float(params.min_p), 1))
            add(llama_cpp.llama_sampler_init_temp(float(params.temperature)))
            seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
            add(llama_cpp.llama_sampler_init_dist(int(seed) & 0xFFFFFFFF))
        for token in recent_tokens[-REPEAT_LAST_N:]:
            llama_cpp.llama_sampler_accept(self.chain, token)

    def sample(self, native) -> int:
        """Draw from the last decoded position's logits (a NativeModel) and record the token."""
        return native.sample(self.chain)

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __enter__(self) -> SamplerChain:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
