"""Kimi-K2 (`kimi_k2`, DeepSeek-V3's computation with 384 experts) and its published YaRN
ramp (beta_fast = beta_slow = 1). llama.cpp's deepseek2 loader ignores the beta keys and
runs 32/1, far from transformers; Itamae's GGUF carries them and its llama.cpp engine
passes them as context parameters, which brings the logits back to transformers'.
Kimi-K2.5 (`kimi_k25`) nests the same language model in text_config: inspect reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from converters.conversion.convert import convert
from converters.facts.inspection import inspect
from engine.llamacpp.scorer import LlamaCppScorer
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


def k25_folder(kimi_k2: Path, dest: Path) -> Path:
    """Kimi-K2.5's layout around the language model: config.json names kimi_k25 outside and
    nests the text model (model_type kimi_k2) in text_config beside a vision_config; the
    language model's tensors sit under `language_model.` (the vision tower is left out)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(kimi_k2, dest, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    text = json.loads((kimi_k2 / "config.json").read_text())
    config = {
        "architectures": ["KimiK25ForConditionalGeneration"],
        "model_type": "kimi_k25",
        "text_config": text,
        "vision_config": {"model_type": "kimi_k25_vision", "hidden_size": 1152},
        "tie_word_embeddings": True,  # Kimi_K25Config's default; the text model's wins
        "media_placeholder_token_id": 163605,
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    tensors = load_file(kimi_k2 / "model.safetensors")
    save_file({f"language_model.{k}": v for k, v in tensors.items()}, dest / "model.safetensors")
    return dest


def test_k25_text_config_inspects_as_its_language_model(hf_checkpoint, tmp_path):
    k2 = inspect(hf_checkpoint("kimi_k2"))
    info = inspect(k25_folder(hf_checkpoint("kimi_k2"), tmp_path / "k25"))
    assert info.arch == "kimi_k25"
    fields = ("n_experts", "experts_per_token", "n_shared_experts", "n_moe_layers", "n_layers")
    fields += ("total_params", "active_params", "context_length", "vocab_size")
    assert [getattr(info, f) for f in fields] == [getattr(k2, f) for f in fields]
    assert (info.n_experts, info.experts_per_token, info.n_shared_experts) == (384, 8, 1)


def test_k25_converts_and_runs_as_its_language_model(hf_checkpoint, tmp_path):
    """The GGUF of the K2.5 layout is the language model's: llama.cpp (with the file's YaRN
    ramp) gives transformers' logits of the same weights as Kimi-K2."""
    folder = k25_folder(hf_checkpoint("kimi_k2"), tmp_path / "k25")
    dest = tmp_path / "k25.gguf"
    convert(folder, dest, "F32")
    got, want = llama_cpp_logits(dest), transformers_logits(hf_checkpoint("kimi_k2"))
    assert relative_error(got, want) <= 1e-4
