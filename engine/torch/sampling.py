"""Next-token choice from logits: repeat penalty, temperature, top-k, top-p, min-p, seed.

Order and meaning follow llama.cpp's common sampler chain (penalties, then top-k, top-p,
min-p on the tempered distribution); the repeat penalty is CTRL's (arXiv 1909.05858):
positive logits divided, negative multiplied. Temperature 0 is greedy.
"""

from __future__ import annotations

import torch

from engine.types import SamplingParams

REPEAT_WINDOW = 64  # tokens the repeat penalty looks back over, llama.cpp's default


class Sampler:
    def __init__(self, params: SamplingParams):
        self.p = params
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(int(params.seed))
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor, context: list[int]) -> int:
        """logits [V] float32 -> token id."""
        p = self.p
        logits = logits.float().cpu().clone()  # a normal tensor, edited in place below
        if p.repeat_penalty != 1.0 and context:
            seen = torch.tensor(sorted(set(context[-REPEAT_WINDOW:])), dtype=torch.long)
            values = logits[seen]
            logits[seen] = torch.where(
                values > 0, values / p.repeat_penalty, values * p.repeat_penalty
            )
        if p.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k and p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            drop = order[before >= p.top_p]  # keep the smallest prefix reaching top_p
            probs[drop] = 0.0
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))
