"""The fast GGUF header reader against gguf's own GGUFReader and llama.cpp, on real files:
converted fixtures (with tensors) and the vocabulary GGUFs llama.cpp ships in models/
(real headers of Llama, Phi-3, DeepSeek, GPT-2, Qwen2, Command-R). Hostile headers end in
BadModelFile. The memory planner runs on each real header.
"""

from __future__ import annotations

import contextlib
import struct

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.core.errors import BadModelFile
from converters.formats.gguf_header import read_contents
from engine.llamacpp import logs
from engine.llamacpp.devices import Hardware
from engine.llamacpp.gguf_layout import read_gguf
from engine.llamacpp.memory_plan import plan_memory
from tests.llamacpp_synthetic import find_vocab_gguf

llama_cpp = pytest.importorskip("llama_cpp")

# small real headers first: GGUFReader needs seconds per 100k vocabulary entries
VOCABS = ("llama-spm", "phi-3", "deepseek-coder", "gpt-2")


def vocab_file(name):
    path = find_vocab_gguf(f"ggml-vocab-{name}.gguf")
    if path is None:
        pytest.skip("llama.cpp's models/ggml-vocab-*.gguf (llama-cpp-python sdist) not found")
    return path


@pytest.fixture(scope="module")
def converted(hf_checkpoint, tmp_path_factory):
    convert = pytest.importorskip("converters.conversion.convert").convert
    path = tmp_path_factory.mktemp("gguf") / "deepseek_v3-q8_0.gguf"
    convert(hf_checkpoint("deepseek_v3"), path, "Q8_0")
    return path


def assert_same_as_gguf_reader(path):
    ours, theirs = read_contents(path), gguf.GGUFReader(path)
    assert ours.data_offset == theirs.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.type == ref.tensor_type
        assert mine.n_elements == int(ref.n_elements) and mine.n_bytes == int(ref.n_bytes)
        assert list(mine.shape) == [int(d) for d in ref.shape]
        assert ours.data_offset + mine.offset == ref.data_offset
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            assert ours.array_lengths[key] == len(field.data)
            if key in ours.metadata:
                assert ours.metadata[key] == field.contents(), key
        else:
            assert ours.metadata[key] == pytest.approx(field.contents()), key


def test_converted_file_reads_as_gguf_reader_reads_it(converted):
    assert_same_as_gguf_reader(converted)
    layout = read_gguf(converted).layout
    assert layout.mla and layout.n_experts == 16 and layout.experts_per_token == 4
    assert layout.expert_bytes > 0 and layout.weight_bytes < converted.stat().st_size
    routed = sum(t.n_bytes for t in read_contents(converted).tensors if "_exps." in t.name)
    assert layout.expert_bytes == routed
    # the backend's ModelInfo is what `itamae inspect` says about the same file
    from converters.facts.inspection import inspect_gguf

    assert read_gguf(converted).model_info().to_json() == inspect_gguf(converted).to_json()


@pytest.mark.parametrize("name", VOCABS)
def test_real_vocab_headers_read_as_gguf_reader_and_llama_cpp_read_them(name):
    path = vocab_file(name)
    assert_same_as_gguf_reader(path)
    header = read_gguf(path)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # llama.cpp then reads the vocabulary, not the hyperparameters
    with logs.captured():
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp could not read {path.name}"
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        assert header.n_vocab == llama_cpp.llama_vocab_n_tokens(vocab)
        bos = header.metadata.get("tokenizer.ggml.bos_token_id")
        if bos is not None:
            assert bos == llama_cpp.llama_vocab_bos(vocab)
        template = llama_cpp.llama_model_chat_template(model, None)
        assert header.metadata.get("tokenizer.chat_template") == (template and template.decode())
    finally:
        llama_cpp.llama_model_free(model)


def test_planner_on_real_headers():
    for name in VOCABS:
        layout = read_gguf(vocab_file(name)).layout
        plan = plan_memory(layout, Hardware.of(ram_gb=32, vram_gb=8))
        assert plan.fits and plan.gpu_layers == layout.n_layers + 1  # vocab files: no weights
        assert plan.kv_bytes == layout.kv_cache_bytes(plan.n_ctx)
    # Llama-2-7B shape (llama-spm): 32 layers x 32 KV heads x 128 x (K+V) x f16 = 512 KiB/token
    assert read_gguf(vocab_file("llama-spm")).layout.kv_cache_bytes(1) == 512 * 1024
    # GPT-2: 12 layers x 768 x 2 x 2 bytes
    assert read_gguf(vocab_file("gpt-2")).layout.kv_cache_bytes(1) == 12 * 768 * 4


def test_large_vocabularies_are_skipped_quickly():
    import time

    path = vocab_file("llama-spm")
    started = time.perf_counter()
    contents = read_contents(path)
    assert time.perf_counter() - started < 2.0
    assert "tokenizer.ggml.tokens" not in contents.metadata
    assert contents.array_lengths["tokenizer.ggml.tokens"] == 32000


def _small_gguf(tmp_path):
    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("blk.0.attn_norm.weight", __import__("numpy").ones(32, dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_truncated_and_hostile_headers_are_bad_model_files(tmp_path):
    data = _small_gguf(tmp_path).read_bytes()
    cases = {
        "empty": b"",
        "magic": b"GGML" + data[4:],
        "version": data[:4] + struct.pack("<I", 7) + data[8:],
        "cut-header": data[:40],
        "cut-data": data[:-16],
        "huge-count": data[:8] + struct.pack("<Q", 2**60) + data[16:],
    }
    for name, blob in cases.items():
        (tmp_path / f"{name}.gguf").write_bytes(blob)
        with pytest.raises(BadModelFile):
            read_contents(tmp_path / f"{name}.gguf")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_fuzzed_headers_parse_or_fail_cleanly(tmp_path, data):
    original = bytearray(_small_gguf(tmp_path).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(original) - 1))
        original[at] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzzed.gguf"
    path.write_bytes(bytes(original))
    with contextlib.suppress(BadModelFile):  # anything else (IndexError, MemoryError...) fails
        read_gguf(path)


def test_plan_command_prints_the_plan_or_the_refusal(converted, capsys):
    import json

    from engine.llamacpp.memory_plan import main

    assert main([str(converted), "--ram-gb", "8", "--vram-gb", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["n_gpu_layers"] == 4 and plan["arch"] == "deepseek2"
    assert main([str(converted), "--ram-gb", "0.5"]) == 1
    assert "does not fit" in capsys.readouterr().err
