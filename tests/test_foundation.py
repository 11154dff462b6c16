"""The foundation: the package installs, the CLI answers, every fixture is a real checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from converters.formats.hf_reader import HFCheckpoint, dequantize_fp8_blocks
from tests.fixtures.checkpoints import ARCHS, FIXTURES, SPECS
from tests.fixtures.reference import reference_model, reference_tokenizer


def _itamae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_help_and_version():
    from app import __version__

    out = _itamae("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"itamae {__version__}"
    out = _itamae("--help")
    assert out.returncode == 0, out.stderr
    assert "Mixture-of-Experts" in out.stdout


# DeepSeek-V4 ships under DeepSeek's own tensor names in FP8/FP4, which transformers reads
# through its conversion mapping: tests/test_family_deepseek_v4.py loads it that way.
LOADED_AS_PUBLISHED = [name for name in FIXTURES if name != "deepseek_v4"]


@pytest.mark.parametrize("name", LOADED_AS_PUBLISHED)
def test_fixture_loads_in_transformers(hf_checkpoint, name):
    folder = hf_checkpoint(name)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (folder / f).is_file(), f
    model = reference_model(folder)
    tok = reference_tokenizer(folder)
    ids = tok("The chef prepares sushi. 寿司職人", return_tensors="pt").input_ids
    if name == "gpt_oss":  # OpenAI's o200k Harmony tokenizer adds no BOS, as published
        assert tok.bos_token_id not in ids[0].tolist()
    else:
        assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], tok.vocab_size)
    assert torch.isfinite(logits).all()
    assert logits[0, -1].std() > 0.1  # not a degenerate (all-equal) output


@pytest.mark.parametrize("arch", ARCHS)
def test_fixture_config_carries_published_fields(hf_checkpoint, arch):
    config = json.loads((hf_checkpoint(arch) / "config.json").read_text())
    assert config["model_type"] == arch
    if "text_config" in config:  # Qwen3.5's release: transformers 5's rope_parameters, nested
        assert "partial_rotary_factor" in config["text_config"]["rope_parameters"]
    else:
        assert "rope_theta" in config and "rope_parameters" not in config
    for key, value in SPECS[arch][1].items():
        assert config[key] == value, key
    if arch != "llama":
        names = HFCheckpoint(hf_checkpoint(arch)).tensor_names()
        per_expert = [n for n in names if ".experts.7." in n]
        assert per_expert, "experts must be stored one tensor per expert, as published"


def test_deepseek_v3_fixture_has_mtp_layer(hf_checkpoint):
    folder = hf_checkpoint("deepseek_v3")
    config = json.loads((folder / "config.json").read_text())
    assert config["scoring_func"] == "sigmoid" and config["topk_method"] == "noaux_tc"
    mtp = f"model.layers.{config['num_hidden_layers']}."
    names = HFCheckpoint(folder).tensor_names()
    for part in ("eh_proj.weight", "enorm.weight", "hnorm.weight", "shared_head.head.weight"):
        assert mtp + part in names


def test_fp8_fixture_is_block_scaled_as_published(hf_checkpoint):
    folder = hf_checkpoint("deepseek_v3_fp8")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["weight_block_size"] == [128, 128]
    ckpt = HFCheckpoint(folder)
    name = "model.layers.1.mlp.experts.0.down_proj.weight"
    assert ckpt.dtype_name(name) == "F8_E4M3"
    out_dim, in_dim = ckpt.shape(name)
    assert out_dim % 128 and in_dim % 128 and out_dim > 128  # full and partial blocks
    scale = ckpt._raw(name + "_scale_inv")
    assert scale.dtype == torch.float32
    assert tuple(scale.shape) == (-(-out_dim // 128), -(-in_dim // 128))
    # The reader's dequantisation is exactly weight * scale of its block, element by element.
    weight = ckpt._raw(name).float()
    got = ckpt.get(name)
    for i, j in [(0, 0), (out_dim - 1, in_dim - 1), (130, 5), (3, 129)]:
        assert got[i, j] == weight[i, j] * scale[i // 128, j // 128]
    assert ckpt.dtype_name("model.embed_tokens.weight") == "BF16"
    assert ckpt.dtype_name("model.layers.1.mlp.gate.weight") == "BF16"


def test_fp8_dequantization_rejects_wrong_scale_shape():
    from converters.core.errors import BadModelFile

    weight = torch.zeros(200, 130).to(torch.float8_e4m3fn)
    with pytest.raises(BadModelFile, match="needs"):
        dequantize_fp8_blocks(weight, torch.ones(1, 1), (128, 128))


def test_reader_refuses_pickled_weights(tmp_path):
    from converters.core.errors import ItamaeError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ItamaeError, match="never loads"):
        HFCheckpoint(tmp_path)
