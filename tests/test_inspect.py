"""`inspect` on HF folders and GGUF files, checked against transformers' own parameter count
and against the GGUF's own tensor types; the `itamae inspect/convert --json` commands."""

from __future__ import annotations

import json
import shutil

import pytest

from app.cli import main
from converters.conversion.convert import convert
from converters.core.errors import OutputExists
from converters.facts.inspection import inspect
from tests.fixtures.checkpoints import ARCHS
from tests.fixtures.reference import reference_model

EXPECTED = {  # arch: (routed experts, per token, shared experts, MoE layers of 3)
    "mixtral": (8, 2, 0, 3),
    "qwen2_moe": (8, 4, 1, 3),
    "qwen3_moe": (8, 2, 0, 3),
    "olmoe": (8, 2, 0, 3),
    "deepseek_v2": (8, 2, 2, 2),
    "deepseek_v3": (16, 4, 1, 2),
    "llama": (0, 0, 0, 0),
    "qwen3_next": (8, 2, 1, 4),  # of 4 layers
    "qwen3_5_moe": (8, 2, 1, 4),  # of 4 layers
    "glm4_moe": (16, 4, 1, 2),
    "minimax_m2": (16, 4, 0, 3),
    "kimi_k2": (384, 8, 1, 2),
    "glm4_moe_lite": (16, 4, 1, 2),
    "deepseek_v32": (16, 4, 1, 2),
}


def transformers_counts(folder) -> tuple[int, int]:
    """(total, routed-expert) weights of the model transformers builds (its state dict, so
    that persistent buffers such as DeepSeek-V3's correction bias count too)."""
    state = reference_model(folder).state_dict()
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".experts." in n)
    return total, routed


@pytest.fixture(scope="module")
def gguf_of(hf_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspect")

    def make(arch, recipe="F32"):
        dest = folder / f"{arch}-{recipe}.gguf"
        if not dest.exists():
            convert(hf_checkpoint(arch), dest, recipe)
        return dest

    return make


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_folder_counts_match_transformers(arch, hf_checkpoint):
    folder = hf_checkpoint(arch)
    info = inspect(folder)
    total, routed = transformers_counts(folder)
    n_experts, per_token, shared, moe_layers = EXPECTED[arch]
    assert (info.format, info.arch) == ("hf", arch)
    assert info.total_params == total  # DeepSeek's MTP layer is not counted, as transformers
    assert info.active_params == total - routed + round(routed * per_token / max(1, n_experts))
    assert (info.n_experts, info.experts_per_token) == (n_experts, per_token)
    assert (info.n_shared_experts, info.n_moe_layers) == (shared, moe_layers)
    assert info.license == "apache-2.0"
    assert info.bits_per_weight["attention"] == 32.0
    assert info.size_bytes == sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@pytest.mark.parametrize(
    "arch",
    (
        "mixtral",
        "qwen2_moe",
        "deepseek_v2",
        "deepseek_v3",
        "llama",
        "glm4_moe",
        "minimax_m2",
        "glm4_moe_lite",
    ),
)
def test_gguf_file_describes_the_same_model(arch, hf_checkpoint, gguf_of):
    hf = inspect(hf_checkpoint(arch))
    info = inspect(gguf_of(arch))
    assert (info.format, info.arch) == ("gguf", arch)
    assert info.total_params == hf.total_params
    assert info.active_params == hf.active_params
    fields = ("n_experts", "experts_per_token", "n_shared_experts", "n_moe_layers", "n_layers")
    assert [getattr(info, f) for f in fields] == [getattr(hf, f) for f in fields]
    assert (info.context_length, info.vocab_size, info.license) == (
        hf.context_length,
        hf.vocab_size,
        "apache-2.0",
    )


def test_bits_per_weight_follow_the_tensor_types(gguf_of):
    info = inspect(gguf_of("qwen2_moe", "Q8_0"))
    assert info.quant == "Q8_0"
    assert info.bits_per_weight["experts"] == 8.5  # 34 bytes per 32 weights
    assert info.bits_per_weight["shared"] == 8.5
    assert info.bits_per_weight["embeddings"] == 8.5
    assert info.bits_per_weight["other"] == 32.0  # norms and routers stay F32
    assert set(info.dtypes) == {"Q8_0", "F32"}


def test_fp8_checkpoint_reports_its_block_scales(hf_checkpoint):
    info = inspect(hf_checkpoint("deepseek_v3_fp8"))
    assert info.quant == "fp8"
    assert 8.0 < info.bits_per_weight["experts"] < 8.1  # 8-bit weights + one f32 per 128x128
    assert info.bits_per_weight["embeddings"] == 16.0


def test_inspect_and_convert_commands_print_json(hf_checkpoint, tmp_path, capsys):
    dest = tmp_path / "m.gguf"
    assert main(["convert", str(hf_checkpoint("olmoe")), "-o", str(dest), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["output"] == str(dest) and result["recipe"] == "Q8_0"
    assert result["size_bytes"] == dest.stat().st_size

    assert main(["inspect", str(dest), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "olmoe" and info["n_experts"] == 8 and info["experts_per_token"] == 2
    assert info["total_params"] > info["active_params"] > 0

    assert main(["convert", str(hf_checkpoint("olmoe")), "-o", str(dest), "--json"]) == 2
    assert "--force" in json.loads(capsys.readouterr().out)["error"]


def test_model_card_facts_reach_general_keys(hf_checkpoint, tmp_path):
    import gguf

    folder = tmp_path / "carded"
    shutil.copytree(hf_checkpoint("qwen3_moe"), folder)
    (folder / "README.md").write_text(
        "---\nlicense: other\nlicense_name: qwen-research\nlicense_link: LICENSE\n"
        "base_model:\n- Qwen/Qwen3-30B-A3B-Base\ndatasets: [HuggingFaceFW/fineweb]\n"
        "language: [en, ja]\n---\n\n# Tiny Qwen3 MoE\n",
        encoding="utf-8",
    )
    dest = tmp_path / "carded.gguf"
    convert(folder, dest, "Q8_0", repo_id="itamae/tiny-qwen3-moe")
    fields = gguf.GGUFReader(dest).fields

    def value(key):
        return fields[key].contents()

    assert value("general.name") == "Tiny Qwen3 MoE"
    assert (value("general.license"), value("general.license.name")) == ("other", "qwen-research")
    assert value("general.base_model.count") == 1
    assert (
        value("general.base_model.0.repo_url") == "https://huggingface.co/Qwen/Qwen3-30B-A3B-Base"
    )
    assert value("general.dataset.0.repo_url") == "https://huggingface.co/HuggingFaceFW/fineweb"
    assert value("general.source.url") == "https://huggingface.co/itamae/tiny-qwen3-moe"
    assert value("general.languages") == ["en", "ja"]


def test_torch_format_through_convert_and_inspect(hf_checkpoint, tmp_path):
    """fmt="torch" reaches converters.formats.torch_format; inspect reads its manifest."""
    hf = inspect(hf_checkpoint("qwen3_moe"))
    dest = tmp_path / "torch-int8"
    convert(hf_checkpoint("qwen3_moe"), dest, "int8", fmt="torch")
    info = inspect(dest)
    assert (info.format, info.arch, info.quant) == ("torch", "qwen3_moe", "int8")
    assert (info.total_params, info.active_params) == (hf.total_params, hf.active_params)
    assert 8 < info.bits_per_weight["experts"] < 8.5  # int8 rows plus one f32 scale per row
    with pytest.raises(OutputExists):
        convert(hf_checkpoint("qwen3_moe"), dest, "int8", fmt="torch")
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(OutputExists, match="not an Itamae torch-format model"):
        convert(
            hf_checkpoint("qwen3_moe"), tmp_path / "not-a-model", "int8", fmt="torch", force=True
        )
