"""Greedy decoding of Itamae's F32 GGUF in llama.cpp (F32 KV cache) against transformers fp32
on the source checkpoint, token for token, for the families added with the 2025 MoE releases
(the logits themselves are compared in test_convert_gguf)."""

from __future__ import annotations

import pytest
import torch

from tests.convert_helpers import PROMPT, converted_files, llama_cpp_run
from tests.fixtures.reference import reference_model

llama_cpp = pytest.importorskip("llama_cpp")

# deepseek_v3: DeepSeek-V3 / R1 / V3.1 (one weights layout); deepseek_v32: sparse attention
FAMILIES = (
    "glm4_moe",
    "minimax_m2",
    "minimax_m2_fp8",
    "kimi_k2",
    "glm4_moe_lite",
    "deepseek_v3",
    "deepseek_v32",
)
STEPS = 16

converted = converted_files()


@pytest.mark.parametrize("arch", FAMILIES)
def test_llama_cpp_greedy_equals_transformers(arch, hf_checkpoint, converted):
    ref = reference_model(hf_checkpoint(arch))
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        want = ref.generate(ids, do_sample=False, max_new_tokens=STEPS, min_new_tokens=STEPS)
    want = want[0, len(PROMPT) :].tolist()
    assert llama_cpp_run(converted(arch), PROMPT, STEPS, n_ctx=128)[1] == want
