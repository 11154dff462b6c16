"""Both engines' samplers draw from the same distribution for the same settings.

The reference is llama.cpp's own sampler chain (engine/llamacpp/sampling.py, driven on a
row of logits through llama_sampler_apply, no model needed); the torch engine's Sampler
must match it. Each setting draws DRAWS tokens from each and compares the two histograms
with a chi-square test of homogeneity: a p-value under ALPHA fails. The settings include
ones where the order of the samplers changes which tokens survive (temperature before or
after top-p and min-p), so the old torch order fails here.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from engine.llamacpp.sampling import SamplerChain
from engine.torch.sampling import Sampler
from engine.types import SamplingParams

DRAWS = 3000
ALPHA = 1e-4  # a false alarm about once in ten thousand runs per setting
LOGITS = [2.0, 1.0, 0.0, -1.0, 0.5, -0.5, 1.5, -2.0]
CONTEXT = [0, 0, 6, 1]  # earlier tokens, for the penalties

SETTINGS = {
    "issue-17 example: T=0.5 top_p=0.9": SamplingParams(temperature=0.5, top_p=0.9),
    "plain T=1": SamplingParams(temperature=1.0),
    "hot T=1.5 top_k=4": SamplingParams(temperature=1.5, top_k=4),
    "min_p after a cold temperature": SamplingParams(temperature=0.4, min_p=0.2),
    "top_k, top_p and min_p together": SamplingParams(
        temperature=0.8, top_k=6, top_p=0.8, min_p=0.05
    ),
    "repeat, frequency and presence penalties": SamplingParams(
        temperature=1.0, repeat_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.3
    ),
    "logit_bias": SamplingParams(temperature=1.0, logit_bias={3: 3.0, 0: -5.0}),
}


def _llamacpp_draws(params: SamplingParams) -> Counter:
    counts: Counter = Counter()
    for i in range(DRAWS):
        # a fresh chain per draw: each draw sees the same context (the chain's penalties
        # would otherwise learn the drawn tokens), seeded apart
        seeded = SamplingParams(**{**params.__dict__, "seed": 1000 + i})
        with SamplerChain(seeded, len(LOGITS), CONTEXT) as chain:
            counts[chain.sample_logits(LOGITS)] += 1
    return counts


def _torch_draws(params: SamplingParams) -> Counter:
    sampler = Sampler(SamplingParams(**{**params.__dict__, "seed": 7}))
    logits = torch.tensor(LOGITS)
    return Counter(sampler(logits, CONTEXT) for _ in range(DRAWS))


def _homogeneity_p_value(a: Counter, b: Counter) -> float:
    """Chi-square test that two histograms come from one distribution."""
    tokens = sorted(set(a) | set(b))
    if len(tokens) < 2:
        return 1.0
    total_a, total_b = sum(a.values()), sum(b.values())
    statistic = 0.0
    for t in tokens:
        row = a[t] + b[t]
        for observed, total in ((a[t], total_a), (b[t], total_b)):
            expected = row * total / (total_a + total_b)
            statistic += (observed - expected) ** 2 / expected
    dof = torch.tensor((len(tokens) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(statistic / 2, dtype=torch.float64)))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_torch_and_llamacpp_sample_the_same_distribution(name):
    params = SETTINGS[name]
    reference, ours = _llamacpp_draws(params), _torch_draws(params)
    p = _homogeneity_p_value(reference, ours)
    assert p > ALPHA, f"{name}: llama.cpp drew {dict(reference)}, torch {dict(ours)} (p={p:.2g})"


def test_the_issue_example_keeps_three_tokens_in_both():
    # logits [2, 1, 0, -1], T=0.5, top_p=0.9: top-p on the untempered distribution keeps
    # three tokens (0.64 + 0.24 < 0.9 <= 0.97); the third has about 1.6% after tempering.
    params = SamplingParams(temperature=0.5, top_p=0.9, seed=3)
    logits = [2.0, 1.0, 0.0, -1.0]
    sampler = Sampler(params)
    torch_drawn = Counter(sampler(torch.tensor(logits), []) for _ in range(DRAWS))
    llama_drawn: Counter = Counter()
    for i in range(DRAWS):
        with SamplerChain(SamplingParams(temperature=0.5, top_p=0.9, seed=i), 4, []) as chain:
            llama_drawn[chain.sample_logits(logits)] += 1
    assert set(torch_drawn) == set(llama_drawn) == {0, 1, 2}


def test_greedy_follows_the_penalties_and_bias_in_both():
    # Greedy picks the top logit after logit_bias and penalties, in both engines.
    logits = [2.0, 1.9, 0.0]
    for params, expected in (
        (SamplingParams(temperature=0.0), 0),
        (SamplingParams(temperature=0.0, presence_penalty=0.5), 1),  # token 0 is in context
        (SamplingParams(temperature=0.0, logit_bias={2: 10.0}), 2),
    ):
        with SamplerChain(params, 3, [0]) as chain:
            assert chain.sample_logits(logits) == expected
        assert Sampler(params)(torch.tensor(logits), [0]) == expected


def test_greedy_reads_the_logits_without_editing_them():
    """Greedy without a mask, bias or penalty reads the caller's logits in place (no copy):
    torch.argmax's choice (the first of equal logits), and the caller's tensor as it was,
    with or without edits (the generation loop reads the same logits for logprobs after)."""
    logits = torch.randn(151_936)
    logits[[7, 90_000]] = logits.max() + 1.0  # a tie: the first index wins
    before = logits.clone()
    greedy = SamplingParams(temperature=0.0)
    assert Sampler(greedy)(logits, [1, 2, 3]) == int(torch.argmax(logits)) == 7
    allowed = torch.ones(151_936, dtype=torch.bool)
    allowed[7] = False
    edited = SamplingParams(temperature=0.0, logit_bias={5: 100.0}, repeat_penalty=1.3)
    assert Sampler(greedy)(logits, [], allowed) == 90_000
    assert Sampler(edited)(logits, [7, 90_000]) == 5
    assert torch.equal(logits, before)
