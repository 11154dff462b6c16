"""Bad input gets an ItamaeError that names the problem and the fix, and writes nothing."""

from __future__ import annotations

import json
import shutil
import threading
from collections import namedtuple

import pytest
from safetensors.torch import load_file, save_file

from converters.conversion import convert as convert_module
from converters.conversion.convert import convert
from converters.core.errors import (
    BadModelFile,
    Cancelled,
    ItamaeError,
    NotEnoughDisk,
    OutputExists,
    UnsupportedArchitecture,
)


@pytest.fixture
def qwen(hf_checkpoint, tmp_path):
    """A private copy of the qwen3_moe fixture to damage."""
    folder = tmp_path / "qwen3_moe"
    shutil.copytree(hf_checkpoint("qwen3_moe"), folder)
    return folder


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def edit_tensors(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def assert_nothing_written(out):
    assert list(out.iterdir()) == []


def test_unknown_architecture_lists_the_supported_ones(qwen, out):
    edit_config(qwen, model_type="gpt_neox_moe")
    with pytest.raises(UnsupportedArchitecture) as e:
        convert(qwen, out / "m.gguf")
    assert "gpt_neox_moe" in str(e.value)
    for arch in ("mixtral", "qwen3_moe", "deepseek_v3", "olmoe", "llama"):
        assert arch in str(e.value)
    assert_nothing_written(out)


def test_missing_expert_is_named(qwen, out):
    edit_tensors(qwen, lambda t: t.pop("model.layers.1.mlp.experts.5.up_proj.weight"))
    with pytest.raises(BadModelFile) as e:
        convert(qwen, out / "m.gguf")
    assert "Layer 1" in str(e.value) and "up_proj" in str(e.value) and "[5]" in str(e.value)
    assert_nothing_written(out)


def test_missing_layer_tensor_is_named(qwen, out):
    edit_tensors(qwen, lambda t: t.pop("model.layers.2.post_attention_layernorm.weight"))
    with pytest.raises(BadModelFile, match=r"blk\.2\.ffn_norm"):
        convert(qwen, out / "m.gguf")
    assert_nothing_written(out)


def test_misshapen_tensor_is_refused(qwen, out):
    def shrink(tensors):
        name = "model.layers.0.input_layernorm.weight"
        tensors[name] = tensors[name][:100].clone()

    edit_tensors(qwen, shrink)
    with pytest.raises(BadModelFile, match="input_layernorm.*shape"):
        convert(qwen, out / "m.gguf")
    assert_nothing_written(out)


def test_experts_of_different_shapes_are_refused(qwen, out):
    def shrink(tensors):
        name = "model.layers.0.mlp.experts.3.down_proj.weight"
        tensors[name] = tensors[name][:, :128].clone()

    edit_tensors(qwen, shrink)
    with pytest.raises(BadModelFile, match="different shapes"):
        convert(qwen, out / "m.gguf")
    assert_nothing_written(out)


def test_truncated_safetensors_is_refused(qwen, out):
    file = qwen / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadModelFile, match="truncated or corrupted"):
        convert(qwen, out / "m.gguf")
    assert_nothing_written(out)


def test_unknown_pre_tokenizer_is_refused(qwen, out):
    tokenizer = json.loads((qwen / "tokenizer.json").read_text())
    split = tokenizer["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = r"\p{L}+|\p{N}{1,5}|\s+"
    (qwen / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(
        UnsupportedArchitecture, match="split pattern.*not one llama.cpp implements"
    ):
        convert(qwen, out / "m.gguf")
    assert_nothing_written(out)


def test_unknown_recipe(qwen, out):
    with pytest.raises(ItamaeError, match="Unknown quantization recipe 'q7'.*moe-q4"):
        convert(qwen, out / "m.gguf", "q7")
    assert_nothing_written(out)


def test_existing_output_is_kept_without_force(qwen, out):
    dest = out / "m.gguf"
    dest.write_bytes(b"precious")
    with pytest.raises(OutputExists, match="--force"):
        convert(qwen, dest)
    assert dest.read_bytes() == b"precious"
    convert(qwen, dest, force=True)
    assert dest.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in out.iterdir()] == ["m.gguf"]


def test_not_enough_disk_is_checked_before_writing(qwen, out, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(convert_module.shutil, "disk_usage", lambda _: usage(10**9, 10**9, 1000))
    with pytest.raises(NotEnoughDisk, match="GiB"):
        convert(qwen, out / "m.gguf")
    assert_nothing_written(out)


def test_cancel_leaves_nothing(qwen, out):
    cancel = threading.Event()

    def progress(fraction, what):
        if fraction > 0.3:
            cancel.set()

    with pytest.raises(Cancelled):
        convert(qwen, out / "m.gguf", "Q8_0", progress=progress, cancel=cancel)
    assert_nothing_written(out)


def test_interrupt_mid_write_leaves_no_partial_file(qwen, out):
    def progress(fraction, what):
        if fraction > 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(qwen, out / "m.gguf", "F32", progress=progress)
    assert_nothing_written(out)


def test_leftovers_of_a_killed_conversion_are_removed(qwen, out):
    """A conversion killed outright (no chance to clean up) leaves only a temporary name,
    never the final one; the next conversion to that name removes it."""
    dead_pid = 2**22 + 12345  # above the kernel's default pid_max: no such process
    leftover = out / f".m.gguf.partial-{dead_pid}"
    leftover.write_bytes(b"GGUF half-written")
    convert(qwen, out / "m.gguf")
    assert [p.name for p in out.iterdir()] == ["m.gguf"]
