"""Kimi-K2 (`kimi_k2`, DeepSeek-V3's computation with 384 experts) and its published YaRN
ramp (beta_fast = beta_slow = 1). llama.cpp's deepseek2 loader ignores the beta keys and
runs 32/1, far from transformers; Itamae's GGUF carries them and its llama.cpp engine
passes them as context parameters, which brings the logits back to transformers'."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from converters.conversion.convert import convert
from converters.facts.inspection import inspect
from engine.scoring_llamacpp import LlamaCppScorer
from tests.convert_helpers import PROMPT, llama_cpp_logits, relative_error, transformers_logits


@pytest.fixture(scope="module")
def kimi_gguf(hf_checkpoint, tmp_path_factory):
    dest = tmp_path_factory.mktemp("kimi") / "kimi.gguf"
    convert(hf_checkpoint("kimi_k2"), dest, "F32")
    return dest


def test_gguf_carries_the_published_yarn_ramp(kimi_gguf):
    fields = GGUFReader(kimi_gguf).fields
    assert fields["deepseek2.rope.scaling.yarn_beta_fast"].contents() == 1.0
    assert fields["deepseek2.rope.scaling.yarn_beta_slow"].contents() == 1.0
    assert fields["deepseek2.expert_count"].contents() == 384


def test_llama_cpp_alone_ignores_the_ramp(kimi_gguf, hf_checkpoint):
    """The reason the engine passes them: without, llama.cpp is far from transformers."""
    plain = llama_cpp_logits(kimi_gguf, file_betas=False)
    assert relative_error(plain, transformers_logits(hf_checkpoint("kimi_k2"))) > 1e-2


def test_itamae_llama_cpp_engine_applies_the_ramp(kimi_gguf, hf_checkpoint):
    scorer = LlamaCppScorer(kimi_gguf, window=len(PROMPT), threads=2)
    try:
        got = scorer.score(PROMPT).logits.astype(np.float64)
    finally:
        scorer.close()
    assert relative_error(got, transformers_logits(hf_checkpoint("kimi_k2"))) <= 1e-4


def test_gguf_inspects_as_the_checkpoint(kimi_gguf, hf_checkpoint):
    """A GGUF cannot tell Kimi-K2 from DeepSeek-V3 (the same computation, llama.cpp's
    deepseek2): its family reads as deepseek_v3, every count as the checkpoint's."""
    hf, info = inspect(hf_checkpoint("kimi_k2")), inspect(kimi_gguf)
    assert (hf.arch, info.arch) == ("kimi_k2", "deepseek_v3")
    fields = ("n_experts", "experts_per_token", "n_shared_experts", "n_moe_layers", "n_layers")
    fields += ("total_params", "active_params", "context_length")
    assert [getattr(info, f) for f in fields] == [getattr(hf, f) for f in fields]
    assert (hf.n_experts, hf.experts_per_token, hf.n_moe_layers) == (384, 8, 2)
