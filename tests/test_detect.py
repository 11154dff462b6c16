"""engine.detect: a model's format by its content (never its name), its engine and family.

The bundled demo model is the reference: its Hugging Face folder says `model_type` in
config.json, and its GGUF (written by Itamae's converter) says `general.architecture`,
read here with gguf-py's own GGUFReader.
"""

from __future__ import annotations

import json
import shutil
import struct

import gguf
import pytest

from converters.core.errors import BadModelFile, ItamaeError
from engine import detect, load
from engine.loader import DEMO_DIR

DEMO_HF = DEMO_DIR / "hf"
DEMO_GGUF = sorted(DEMO_DIR.glob("*.gguf"))[0]


def gguf_architecture(path) -> str:
    field = gguf.GGUFReader(path).fields["general.architecture"]
    return bytes(field.parts[-1]).decode()


def test_a_folder_is_run_by_the_torch_engine_and_its_family_is_its_model_type():
    found = detect(DEMO_HF)
    model_type = json.loads((DEMO_HF / "config.json").read_text())["model_type"]
    assert (found.location, found.format, found.engine) == (DEMO_HF, "hf", "torch")
    assert found.family == model_type == "qwen3_moe"
    assert detect("demo").location == DEMO_HF
    assert detect("demo", "llamacpp").location == DEMO_GGUF


def test_a_gguf_is_known_by_its_magic_bytes_without_a_gguf_suffix(tmp_path):
    blob = tmp_path / "sha256-0123abcd"  # how Ollama stores a model: no suffix at all
    blob.symlink_to(DEMO_GGUF)
    found = detect(blob)
    assert (found.format, found.engine) == ("gguf", "llamacpp")
    assert gguf_architecture(blob) == "qwen3moe"  # llama.cpp's name for the family
    assert found.family == detect(DEMO_HF).family == "qwen3_moe"
    backend = load(blob, n_ctx=256, threads=1)
    try:
        assert backend.info.format == "gguf"
    finally:
        backend.close()


def test_a_file_named_gguf_that_is_not_one_is_refused_before_any_engine(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    with pytest.raises(BadModelFile, match="GGUF magic"):
        detect(fake)
    with pytest.raises(BadModelFile, match="GGUF magic"):
        load(fake)
    # an engine named by the person is kept: that engine says what is wrong with the file
    assert detect(fake, "llamacpp").engine == "llamacpp"


def test_a_lone_safetensors_file_is_refused_with_what_is_missing(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    lone = tmp_path / "model.safetensors"
    lone.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(BadModelFile, match="safetensors file has no config"):
        detect(lone)


def test_a_url_is_a_remote_server_and_a_missing_path_is_refused(tmp_path):
    found = detect("http://127.0.0.1:8080/v1")
    assert (found.format, found.engine, found.family) == ("remote", "remote", "")
    with pytest.raises(ItamaeError, match="No model at"):
        detect(tmp_path / "missing")
    with pytest.raises(ItamaeError, match="Unknown engine"):
        detect(DEMO_HF, "vllm")


def test_a_folder_without_config_has_no_family(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(DEMO_HF, folder)
    (folder / "config.json").unlink()
    found = detect(folder)
    assert (found.format, found.engine, found.family) == ("unknown", "torch", "")


def test_a_fifo_is_not_opened(tmp_path):
    """A named pipe in a scanned folder must not block the scan (opening it would wait for a
    writer forever)."""
    import os

    from converters.formats.detect import source_format

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert source_format(fifo) == "unknown"
