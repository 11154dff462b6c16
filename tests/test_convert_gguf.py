"""GGUF conversion checked against references nobody here wrote: transformers' logits on the
source checkpoint, and llama.cpp (through llama-cpp-python) running the converted file.

For every architecture the F32 file must give transformers' logits on a fixed 32-token
prompt within 1e-4 relative (llama.cpp with an F32 KV cache; its default F16 cache alone
costs ~3e-4), and the Q8_0 file must stay within mean KL 0.01 of the F32 file.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from converters.convert import convert
from tests.fixtures.checkpoints import ARCHS
from tests.fixtures.reference import reference_model

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = [0] + list(range(40, 71))  # bos then 31 ordinary tokens: 32 in all
F32_RTOL = 1e-4
Q8_KL_MAX = 0.01


def llama_cpp_logits(path, tokens=PROMPT) -> np.ndarray:
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=64,
        n_threads=2,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def transformers_logits(folder, tokens=PROMPT) -> np.ndarray:
    model = reference_model(folder)
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def kl_and_top1(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    lp = reference - np.logaddexp.reduce(reference, axis=1, keepdims=True)
    lq = other - np.logaddexp.reduce(other, axis=1, keepdims=True)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return float(kl.mean()), float((reference.argmax(1) == other.argmax(1)).mean())


@pytest.fixture(scope="module")
def converted(hf_checkpoint, tmp_path_factory):
    """converted(fixture, recipe) -> the GGUF Itamae writes (made once per module)."""
    folder = tmp_path_factory.mktemp("converted")
    made = {}

    def make(name: str, recipe: str = "F32"):
        if (name, recipe) not in made:
            dest = folder / f"{name}-{recipe}.gguf"
            convert(hf_checkpoint(name), dest, recipe)
            made[name, recipe] = dest
        return made[name, recipe]

    return make


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_gguf_matches_transformers(arch, hf_checkpoint, converted):
    got = llama_cpp_logits(converted(arch))
    want = transformers_logits(hf_checkpoint(arch))
    assert got.shape == want.shape
    assert relative_error(got, want) <= F32_RTOL


@pytest.mark.parametrize("arch", ARCHS)
def test_q8_0_stays_close_to_f32(arch, converted, record_property):
    reference = llama_cpp_logits(converted(arch))
    quantized = llama_cpp_logits(converted(arch, "Q8_0"))
    kl, top1 = kl_and_top1(reference, quantized)
    record_property("q8_0_kl_mean", kl)
    record_property("q8_0_top1_agreement", top1)
    print(f"{arch} Q8_0: mean KL {kl:.5f}, top-1 agreement {top1:.3f}")
    assert kl <= Q8_KL_MAX
    assert converted(arch, "Q8_0").stat().st_size < 0.35 * converted(arch).stat().st_size


def test_fp8_checkpoint_converts_to_the_dequantized_model(hf_checkpoint, converted):
    """DeepSeek-V3 as published in FP8: the GGUF equals the bf16-dequantized reference."""
    got = llama_cpp_logits(converted("deepseek_v3_fp8"))
    want = transformers_logits(hf_checkpoint("deepseek_v3_fp8"))  # dequantized copy
    assert relative_error(got, want) <= F32_RTOL


def test_fp8_tensors_in_the_gguf_equal_the_block_formula(hf_checkpoint, converted):
    """weight * scale_inv per 128x128 block, edge blocks partial, written exactly."""
    import gguf
    from safetensors import safe_open

    folder = hf_checkpoint("deepseek_v3_fp8")
    reader = gguf.GGUFReader(converted("deepseek_v3_fp8"))
    tensors = {t.name: t for t in reader.tensors}
    name = "model.layers.1.self_attn.q_a_proj.weight"  # [160, 320]: full and partial blocks
    with safe_open(folder / "model.safetensors", "pt") as f:
        weight, scale = f.get_tensor(name).float(), f.get_tensor(name + "_scale_inv")
    out_dim, in_dim = weight.shape
    assert out_dim % 128 and in_dim % 128  # both edges have partial blocks
    expected = torch.empty_like(weight)
    for i in range(0, out_dim, 128):
        for j in range(0, in_dim, 128):
            expected[i : i + 128, j : j + 128] = (
                weight[i : i + 128, j : j + 128] * scale[i // 128, j // 128]
            )
    written = np.array(tensors["blk.1.attn_q_a.weight"].data)
    assert np.array_equal(written, expected.numpy())


def test_deepseek_v3_gates_with_sigmoid_when_config_is_silent(hf_checkpoint, tmp_path):
    """transformers saves DeepSeek-V3 without scoring_func; the file must still say sigmoid."""
    folder = tmp_path / "deepseek_v3_silent"
    shutil.copytree(hf_checkpoint("deepseek_v3"), folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("scoring_func", "topk_method"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    dest = tmp_path / "silent.gguf"
    convert(folder, dest, "F32")

    import gguf

    field = gguf.GGUFReader(dest).fields["deepseek2.expert_gating_func"]
    assert field.contents() == int(gguf.ExpertGatingFuncType.SIGMOID)
    assert relative_error(llama_cpp_logits(dest), transformers_logits(folder)) <= F32_RTOL


def test_gguf_carries_tokenizer_and_model_card(hf_checkpoint, converted):
    import gguf

    fields = gguf.GGUFReader(converted("qwen3_moe")).fields
    tokenizer = json.loads((hf_checkpoint("qwen3_moe") / "tokenizer_config.json").read_text())

    def value(key):
        return fields[key].contents()

    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "qwen2"
    assert value("tokenizer.ggml.add_bos_token") is True
    assert value("tokenizer.ggml.bos_token_id") == 0
    assert value("tokenizer.ggml.eos_token_id") == 3  # <|im_end|>
    assert value("tokenizer.chat_template") == tokenizer["chat_template"]
    assert value("general.license") == "apache-2.0"
    assert value("general.name") == "itamae-tiny-qwen3_moe"
