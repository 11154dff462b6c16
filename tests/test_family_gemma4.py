"""Gemma 4 MoE end to end on a tiny checkpoint laid out as Google publishes
google/gemma-4-26B-A4B (tests/fixtures/gemma4.py: the multimodal wrapper, a vision tower,
K = V global layers, proportional RoPE, soft-capped logits, a dense MLP beside the experts).

References: llama.cpp's own converter on the same folder (every tensor, metadata key and
the tokenizer of Itamae's GGUF equal to the file it writes) and transformers fp32 (the
logits llama.cpp computes from Itamae's F32 file; inspect's parameter counts).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGUFReader

from app.cli import main
from converters.conversion.convert import convert
from converters.facts.inspection import inspect
from tests.convert_helpers import llama_cpp_logits, relative_error, transformers_logits
from tests.fixtures.llamacpp_reference import run_llamacpp_converter
from tests.fixtures.reference import reference_model

llama_cpp = pytest.importorskip("llama_cpp")

ARCH = "gemma4"
# <bos>, then 47 ordinary tokens: 48 positions against a 16-token sliding window
PROMPT = [2] + list(range(300, 347))


@pytest.fixture(scope="module")
def folder(hf_checkpoint):
    return hf_checkpoint(ARCH)


@pytest.fixture(scope="module")
def gguf_of(folder, tmp_path_factory):
    made, root = {}, tmp_path_factory.mktemp("gemma4")

    def make(recipe: str):
        if recipe not in made:
            made[recipe] = root / f"{recipe}.gguf"
            convert(folder, made[recipe], recipe)
        return made[recipe]

    return make


def tensors(path) -> dict:
    return {t.name: t for t in GGUFReader(path).tensors}


@pytest.mark.slow  # llama.cpp's converter in a subprocess
def test_gguf_equals_llama_cpps_own_conversion(folder, gguf_of, tmp_path):
    theirs = tmp_path / "llama-cpp.gguf"
    run_llamacpp_converter(folder, theirs, "f32")
    ours = gguf_of("F32")
    got, want = tensors(ours), tensors(theirs)
    assert set(got) == set(want)
    assert "blk.0.ffn_gate_up_exps.weight" in got and "rope_freqs.weight" in got
    for name, t in got.items():
        assert list(t.shape) == list(want[name].shape), name
        assert t.tensor_type == want[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name
    ours_fields, their_fields = GGUFReader(ours).fields, GGUFReader(theirs).fields
    keys = {k for k in their_fields if k.startswith(("gemma4.", "tokenizer.ggml."))}
    assert {k for k in ours_fields if k.startswith("gemma4.")} == {
        k for k in keys if k.startswith("gemma4.")
    }
    for key in keys - {"tokenizer.chat_template"}:
        assert key in ours_fields, key
        assert ours_fields[key].contents() == their_fields[key].contents(), key


@pytest.mark.xfail(
    strict=True,
    reason="llama.cpp's CPU GELU rounds its input to fp16 and reads an fp16 table "
    "(ggml-cpu/vec.h GGML_GELU_FP16), about 1e-3 relative per activation; with that GELU "
    "emulated in transformers positions 0-3 agree to 2e-5, later ones to 1.4e-3 (not found)",
)
def test_f32_gguf_matches_transformers_in_llama_cpp(folder, gguf_of):
    got = llama_cpp_logits(gguf_of("F32"), PROMPT)
    want = transformers_logits(folder, PROMPT)
    assert relative_error(got, want) <= 1e-4


def test_f32_gguf_greedy_equals_transformers_in_llama_cpp(folder, gguf_of):
    """The same next token at all 48 positions; the logits within the 1e-2 that llama.cpp's
    fp16 GELU leaves (measured 6.4e-3; see the xfail above)."""
    got = llama_cpp_logits(gguf_of("F32"), PROMPT)
    want = transformers_logits(folder, PROMPT)
    assert relative_error(got, want) <= 1e-2
    assert (got.argmax(1) == want.argmax(1)).all()


def text_model_counts(folder) -> tuple[int, int]:
    """(total, routed-expert) weights of transformers' language model (the vision tower
    is not the chat model's, and llama.cpp's text conversion leaves it out too)."""
    state = reference_model(folder).model.language_model.state_dict()
    total = sum(t.numel() for t in state.values())
    routed = sum(
        t.numel() for n, t in state.items() if n.startswith("layers.") and ".experts." in n
    )
    return total, routed


def test_inspect_counts_as_transformers(folder, gguf_of, capsys):
    total, routed = text_model_counts(folder)
    active = total - routed + round(routed * 2 / 8)
    assert main(["inspect", str(folder), "--json"]) == 0
    hf = json.loads(capsys.readouterr().out)
    assert (hf["arch"], hf["n_experts"], hf["experts_per_token"]) == (ARCH, 8, 2)
    # the dense MLP beside the experts works for every token: the one shared expert
    assert (hf["n_shared_experts"], hf["n_moe_layers"], hf["n_layers"]) == (1, 6, 6)
    assert (hf["total_params"], hf["active_params"]) == (total, active)
    assert inspect(folder).n_linear_attention_layers == 0
    assert main(["inspect", str(gguf_of("F32")), "--json"]) == 0
    gguf = json.loads(capsys.readouterr().out)
    assert gguf["arch"] == ARCH
    assert (gguf["n_experts"], gguf["experts_per_token"], gguf["n_moe_layers"]) == (8, 2, 6)
    # the GGUF adds rope_freqs (32 frequency factors), which transformers computes instead
    assert (gguf["total_params"], gguf["active_params"]) == (total + 32, active + 32)
