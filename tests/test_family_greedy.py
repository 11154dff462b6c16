"""Greedy decoding of Itamae's F32 GGUF in llama.cpp (F32 KV cache) against transformers fp32
on the source checkpoint, token for token, for the families added with the 2025 MoE releases
(the logits themselves are compared in test_convert_gguf)."""

from __future__ import annotations

import pytest
import torch

from tests.convert_helpers import PROMPT, converted_files, yarn_betas
from tests.fixtures.reference import reference_model

llama_cpp = pytest.importorskip("llama_cpp")

FAMILIES = ("glm4_moe", "minimax_m2", "minimax_m2_fp8", "kimi_k2", "glm4_moe_lite")
STEPS = 16

converted = converted_files()


def llama_cpp_greedy(path, tokens: list[int], n: int) -> list[int]:
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
        **yarn_betas(path),  # as Itamae's llama.cpp engine passes them
    )
    try:
        out: list[int] = []
        llm.eval(tokens)
        for _ in range(n):
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            out.append(token)
            llm.eval([token])
        return out
    finally:
        llm.close()


@pytest.mark.parametrize("arch", FAMILIES)
def test_llama_cpp_greedy_equals_transformers(arch, hf_checkpoint, converted):
    ref = reference_model(hf_checkpoint(arch))
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        want = ref.generate(ids, do_sample=False, max_new_tokens=STEPS, min_new_tokens=STEPS)
    want = want[0, len(PROMPT) :].tolist()
    assert llama_cpp_greedy(converted(arch), PROMPT, STEPS) == want
