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
of attention layer and the hash-routed layers).

Itamae's own GGUF conversion: every tensor of the file `itamae convert` writes (default
recipe) is byte-identical to llama.cpp's converter's on the same folder, with the same
`deepseek4.*` keys (FP8 dequantized to Q8_0, BF16 kept, FP4 experts moved into MXFP4, hash
tables I32, the MTP layer left out); the F32 recipe run in llama.cpp (F32 KV cache) gives
transformers' fp32 logits within 1e-4 on a 160-token prompt, longer than the 16-token
window, than the 4-per-entry CSA compression times the indexer's top-k and than one
128-token HCA entry, and the same greedy tokens; `itamae inspect` of a V4 GGUF (Itamae's or
llama.cpp's) reads the attention kinds and hash-routed layers from its keys. The torch
format's refusal of V4 points to what works (tests/test_torch_deepseek_v4.py)."""

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
PROMPT_TOKENS = 160  # > sliding_window 16, > 4 x index_topk, > one HCA window of 128


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
    # (MXFP4 rows are counted in values, the MTP layer is left out by both), less the rows
    # GPT-2's larger vocabulary added to the embedding, the head and the hash tables
    total = sum(int(np.prod(t.shape)) for t in reader.tensors)
    added = int(reader.fields["tokenizer.ggml.tokens"].contents().__len__()) - cfg.vocab_size
    per_token = 2 * cfg.hidden_size + cfg.num_experts_per_tok * len(hashed)
    assert total - added * per_token == sum(t.numel() for t in reference.state_dict().values())


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


def tensors(path) -> dict:
    return {t.name: t for t in GGUFReader(path).tensors}


@pytest.mark.slow  # llama.cpp's converter takes ~30 s the first time (then cached)
def test_itamae_gguf_equals_llama_cpps_own_conversion(folder, tmp_path):
    from converters.conversion.convert import convert
    from tests.fixtures.llamacpp_reference import reference_pair

    checkpoint, theirs = reference_pair(folder, "f32")  # its types do not follow --outtype
    ours = tmp_path / "itamae.gguf"
    assert main(["convert", str(checkpoint), "-o", str(ours)]) == 0  # the default recipe
    got, want = tensors(ours), tensors(theirs)
    assert set(got) == set(want)
    for name, t in got.items():
        assert list(t.shape) == list(want[name].shape), name
        assert t.tensor_type == want[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name
    kinds = {t.tensor_type.name for n, t in got.items() if "_exps." in n}
    assert kinds == {"MXFP4"} and got["blk.0.ffn_gate_tid2eid.weight"].tensor_type.name == "I32"
    assert got["blk.1.attn_q_a.weight"].tensor_type.name == "Q8_0"  # FP8, as llama.cpp
    assert got["blk.1.attn_compressor_kv.weight"].tensor_type.name == "BF16"
    assert not any(n.startswith("blk.4.") for n in got)  # the MTP layer is left out
    ours_fields, their_fields = GGUFReader(ours).fields, GGUFReader(theirs).fields
    keys = {k for k in their_fields if k.startswith("deepseek4.")}
    assert {k for k in ours_fields if k.startswith("deepseek4.")} == keys
    for key in keys:
        assert ours_fields[key].types == their_fields[key].types, key
        assert ours_fields[key].contents() == their_fields[key].contents(), key
    # a recipe with fewer bits keeps what llama.cpp's converter pins (Q8_0 from FP8 at least)
    convert(checkpoint, tmp_path / "q4.gguf", "Q4_0")
    assert {n: t.tensor_type for n, t in tensors(tmp_path / "q4.gguf").items()} == {
        n: t.tensor_type for n, t in want.items()
    }


def test_f32_gguf_matches_transformers_in_llama_cpp(folder, reference, tmp_path):
    from converters.conversion.convert import convert
    from tests.convert_helpers import llama_cpp_run

    cfg = reference.config
    assert max(cfg.sliding_window, 128, 4 * cfg.index_topk) < PROMPT_TOKENS
    prompt = [cfg.bos_token_id] + list(range(40, 40 + PROMPT_TOKENS - 1))
    convert(folder, tmp_path / "f32.gguf", "F32")
    got, greedy = llama_cpp_run(tmp_path / "f32.gguf", prompt, 16, n_ctx=256)
    with torch.no_grad():
        want = reference(torch.tensor([prompt])).logits[0].double().numpy()
        expected = reference.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=16, eos_token_id=None
        )[0, len(prompt) :].tolist()
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    assert greedy == expected


def test_a_converted_gguf_chats_in_the_llama_cpp_engine(folder, tmp_path):
    """`itamae convert` then the llama.cpp engine (the torch engine runs the folder itself:
    tests/test_torch_deepseek_v4.py)."""
    import engine
    from engine.types import GenerationRequest, SamplingParams

    pytest.importorskip("llama_cpp")
    out = tmp_path / "v4.gguf"
    assert main(["convert", str(folder), "-o", str(out)]) == 0
    backend = engine.load(out, engine="llamacpp")
    try:
        request = GenerationRequest(
            prompt="The chef", sampling=SamplingParams(temperature=0, max_tokens=8)
        )
        final = list(backend.stream(request))[-1]
    finally:
        backend.close()
    assert final.finish_reason in ("stop", "length") and final.token_ids


def test_inspect_of_the_gguf_agrees_with_the_checkpoint(folder, tmp_path, capsys):
    from converters.conversion.convert import convert

    convert(folder, tmp_path / "v4.gguf")
    assert main(["inspect", str(folder), "--json"]) == 0
    hf = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(tmp_path / "v4.gguf"), "--json"]) == 0
    gguf = json.loads(capsys.readouterr().out)
    same = ("arch", "total_params", "active_params", "n_layers", "n_experts",
            "experts_per_token", "n_shared_experts", "n_moe_layers", "vocab_size", "license")  # fmt: skip
    assert {k: gguf[k] for k in same} == {k: hf[k] for k in same}
    assert "quant_fallbacks" not in gguf["extra"] or not gguf["extra"]["quant_fallbacks"]["count"]
    # the attention kind of each layer and the hash-routed layers, from the GGUF's own keys
    v4_facts = ("attention_layers", "hash_routed_layers")
    assert {k: gguf["extra"][k] for k in v4_facts} == {k: hf["extra"][k] for k in v4_facts}


def test_inspect_of_llama_cpps_gguf_reads_the_same_v4_facts(folder, llamacpp_gguf, capsys):
    # the keys llama.cpp's own converter writes (deepseek4.attention.compress_ratios,
    # deepseek4.hash_layer_count) say the same as the checkpoint's config
    assert main(["inspect", str(folder), "--json"]) == 0
    hf = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(llamacpp_gguf), "--json"]) == 0
    gguf = json.loads(capsys.readouterr().out)
    assert gguf["arch"] == ARCH
    for key in ("attention_layers", "hash_routed_layers"):
        assert gguf["extra"][key] == hf["extra"][key], key


def test_recipes_of_llama_cpps_quantizer_are_refused_with_what_works(folder, tmp_path):
    from converters.conversion.convert import convert
    from converters.core.errors import UnsupportedArchitecture

    with pytest.raises(UnsupportedArchitecture, match="Q4_K_M.*Q8_0"):
        convert(folder, tmp_path / "q4km.gguf", "Q4_K_M")
    assert not (tmp_path / "q4km.gguf").exists()
