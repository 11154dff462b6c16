"""DeepSeek-V4 (Flash / Pro) as DeepSeek publishes it: a tiny seeded checkpoint
(tests/fixtures/deepseek_v4.py) under DeepSeek's own tensor names, FP8 projections with e8m0
block scales, FP4 routed experts, hash-routed leading layers, sliding / compressed sparse /
heavily compressed attention layers, hyper-connections and an MTP layer.

What is checked so far: llama.cpp's own converter reads the folder as the V4 it knows
(every tensor name mapped, FP8 dequantized, FP4 experts repacked to MXFP4, the hash tables
carried), and transformers' own deepseek_v4 weight mapping, fed the published tensors'
values, rebuilds the reference model exactly, so the layout is the published one (both
tests fail if, say, w1 and w3 are swapped); `itamae inspect --json` is exact against
transformers' model of the same weights (total and active parameters, experts, the kinds
of attention layer and the hash-routed layers). The torch engine and Itamae's own GGUF
conversion of V4 are not written yet."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from app.cli import main
from tests.fixtures import deepseek_v4
from tests.fixtures.checkpoints import REPO, SEED
from tests.fixtures.llamacpp_reference import llama_cpp_source, with_recognized_vocabulary
from tests.fixtures.tokenizer import write_tokenizer

ARCH = "deepseek_v4"


@pytest.fixture(scope="module")
def folder(hf_checkpoint):
    return hf_checkpoint(ARCH)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' fp32 model of the fixture's weights (rebuilt from the same seed; its
    weights are the values the published FP8 / FP4 tensors hold)."""
    dest = tmp_path_factory.mktemp("v4_reference")
    return deepseek_v4.build(dest, write_tokenizer(dest), SEED)


@pytest.fixture(scope="module")
def llamacpp_gguf(folder, tmp_path_factory):
    """llama.cpp's own converter run on the fixture (GPT-2's vocabulary swapped in)."""
    root = tmp_path_factory.mktemp("v4_llamacpp")
    src = with_recognized_vocabulary(folder, root / "checkpoint")
    out = root / "llamacpp.gguf"
    script = llama_cpp_source() / "convert_hf_to_gguf.py"
    done = subprocess.run(
        [sys.executable, str(script), str(src), "--outfile", str(out), "--outtype", "f32"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_llama_cpps_converter_reads_the_folder_as_published_v4(llamacpp_gguf, reference):
    reader = GGUFReader(llamacpp_gguf)
    assert reader.fields["general.architecture"].contents() == "deepseek4"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    cfg = reference.config
    for bid in range(cfg.num_hidden_layers):  # the FP4 experts, repacked bit for bit
        assert types[f"blk.{bid}.ffn_gate_exps.weight"] == "MXFP4"
    hashed = [n for n in types if "tid2eid" in n or "gate_tid2eid" in n]
    assert len(hashed) == deepseek_v4.PUBLISHED["num_hash_layers"]
    assert types["blk.1.attn_q_a.weight"] == "Q8_0"  # FP8 dequantized, as llama.cpp does
    # the same network: llama.cpp's tensors hold as many parameters as transformers' model
    # (MXFP4 rows are counted in values, the MTP layer is left out by both)
    total = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert total == sum(t.numel() for t in reference.state_dict().values())


def test_inspect_json_is_exact(folder, reference, capsys):
    state = reference.state_dict()
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".mlp.experts." in n)
    cfg = reference.config
    assert main(["inspect", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    kinds = {kind: cfg.layer_types.count(kind) for kind in sorted(set(cfg.layer_types))}
    assert set(kinds) == {
        "sliding_attention",
        "compressed_sparse_attention",
        "heavily_compressed_attention",
    }
    n_fp4 = 3 * cfg.n_routed_experts * cfg.num_hidden_layers
    assert info.pop("bits_per_weight")["experts"] == 4.25  # 4-bit codes + an e8m0 byte per 32
    assert info == {
        "path": str(folder),
        "format": "hf",
        "arch": ARCH,
        "name": "itamae-tiny-deepseek_v4",
        "total_params": total,
        "active_params": total - routed + routed * 4 // 16,
        "n_layers": 4,
        "n_experts": 16,
        "experts_per_token": 4,
        "n_shared_experts": 1,
        "n_moe_layers": 4,
        "n_linear_attention_layers": 0,
        "context_length": 1048576,
        "vocab_size": 1024,
        "dtypes": info["dtypes"] | {"FP4": n_fp4},
        "quant": "fp8",
        "size_bytes": (folder / "model.safetensors").stat().st_size,
        "license": "apache-2.0",
        "files": ["model.safetensors"],
        "extra": {
            "attention_layers": kinds,
            "hash_routed_layers": cfg.mlp_layer_types.count("hash_moe"),
        },
        "is_moe": True,
    }
    assert set(info["dtypes"]) == {"BF16", "F32", "F8_E4M3", "FP4", "I64"}


def _held_values(name: str, f) -> torch.Tensor:
    """A published tensor's values in fp32 (FP8 x its block scale, FP4 codes x theirs)."""

    t = f.get_tensor(name)
    scale_name = name.removesuffix(".weight") + ".scale"
    if scale_name == name or scale_name not in f.keys():
        return t.float() if t.is_floating_point() else t
    scale = f.get_tensor(scale_name).float()
    if t.dtype == torch.int8:  # FP4: element 2i in the low nibble
        codes = t.view(torch.uint8)
        codes = torch.stack((codes & 15, codes >> 4), -1).flatten(-2).long()
        values = deepseek_v4.FP4_VALUES[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
        return values * scale.repeat_interleave(deepseek_v4.FP4_GROUP, 1)
    rows, cols = t.shape
    block = deepseek_v4.FP8_BLOCK
    scale = scale.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return t.float() * scale


def test_transformers_reads_the_published_names_as_its_model(folder, reference, tmp_path):
    # transformers' own conversion_mapping for deepseek_v4 renames DeepSeek's names (and
    # merges the per-expert w1/w3/w2) into its model; fed the published tensors' values
    # (in fp32, so no FP8 loader is needed) it must rebuild the reference exactly
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    with safe_open(folder / "model.safetensors", "pt") as f:
        names = [n for n in f.keys() if not n.endswith(".scale")]
        save_file(
            {n: _held_values(n, f).contiguous() for n in names}, tmp_path / "model.safetensors"
        )
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert all(k.startswith("mtp.") for k in info["unexpected_keys"]), info["unexpected_keys"]
    theirs = loaded.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(theirs[name], value), name


def test_convert_and_torch_engine_say_what_to_do_instead(folder, tmp_path):
    import engine
    from converters.conversion.convert import convert
    from converters.core.errors import UnsupportedArchitecture

    with pytest.raises(UnsupportedArchitecture, match="convert_hf_to_gguf.py"):
        convert(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
    with pytest.raises(UnsupportedArchitecture, match="llama.cpp engine|--engine llamacpp"):
        engine.load(folder, engine="torch")
