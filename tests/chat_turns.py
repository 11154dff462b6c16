"""The torch engine's three-turn check, shared by the family tests: each turn's prompt
extends the last one, the generator resumes from what its cache keeps (the cached prefix, a
windowed cache's rewind, a recurrent state's checkpoint at the previous turn's end), and the
logits must be those of a fresh run of the whole conversation."""

from __future__ import annotations

import torch

from engine.types import GenerationRequest, Message, SamplingParams
from tests.test_torch_parity import rel_err

TURNS = ("Hello there.", "板前は何を切る?", "And the rice?")


def assert_turns_reuse_exactly(
    backend, tolerance: float = 1e-5, reuses: bool = True, **fields
) -> list[int]:
    """Runs the three turns through `backend` (torch engine); returns the last prompt's ids.
    `fields`: more GenerationRequest fields (a thinking switch); `reuses`: whether a turn
    must resume from the cache (False where the template rewrites the last turn before any
    checkpoint the cache keeps)."""
    gen, model = backend.generator, backend.generator.model
    messages: list[Message] = []
    ids: list[int] = []
    for turn, text in enumerate(TURNS):
        messages.append(Message("user", text))
        request = GenerationRequest(
            messages=list(messages),
            sampling=SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
            **fields,
        )
        ids = gen.prompt_ids(request)
        reused, ran = gen._prefill(ids, None, None)
        fresh = model.forward(torch.tensor([ids]), model.new_cache())[0, -1]
        assert rel_err(reused, fresh) < tolerance, f"turn {turn}"
        if turn and reuses:
            assert ran < len(ids)  # the earlier turns were not recomputed
        final = list(gen.stream(request))[-1]
        messages.append(Message("assistant", gen.text.decode(final.token_ids)))
    return ids
