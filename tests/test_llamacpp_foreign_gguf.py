"""GGUF files written by another tool: llama.cpp's own convert_hf_to_gguf.py, run on the
fixtures (with a vocabulary it recognises, see tests/fixtures/llamacpp_reference.py).

The backend must chat with them exactly as llama-cpp-python's own `Llama` decodes them,
read their header (architecture, experts, MLA) as llama.cpp does, and place their experts.
"""

from __future__ import annotations

import json

import pytest

from engine.chat_template import render_chat
from engine.llamacpp.backend import load
from engine.types import GenerationRequest, Message, SamplingParams
from tests.fixtures.tokenizer import CHAT_TEMPLATE
from tests.test_llamacpp_backend import reference_greedy, run

llama_cpp = pytest.importorskip("llama_cpp")
reference = pytest.importorskip("tests.fixtures.llamacpp_reference")

CHAT = [Message("system", "Be brief."), Message("user", "What is nigiri? 握り寿司とは?")]


@pytest.fixture(scope="module")
def foreign_gguf(hf_checkpoint, tmp_path_factory):
    """foreign_gguf(arch) -> llama.cpp's converter's F32 GGUF of that fixture."""
    folder = tmp_path_factory.mktemp("llamacpp-converter")
    made = {}

    def make(arch: str):
        if arch not in made:
            try:
                source = reference.with_recognized_vocabulary(hf_checkpoint(arch), folder / arch)
            except Exception as e:  # the sdist could not be fetched (offline, first run)
                pytest.skip(f"llama.cpp's converter is not available here: {e}")
            # a chat template, so the file is a chat model (GPT-2's vocabulary has none)
            config_path = source / "tokenizer_config.json"
            config = json.loads(config_path.read_text())
            config["chat_template"] = CHAT_TEMPLATE
            config_path.write_text(json.dumps(config))
            made[arch] = reference.run_llamacpp_converter(source, folder / f"{arch}.gguf", "f32")
        return made[arch]

    return make


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_chat_on_llama_cpp_converted_files(arch, foreign_gguf):
    path = foreign_gguf(arch)
    backend = load(path, n_ctx=512, threads=2)
    try:
        assert backend.info.arch == arch and backend.info.n_experts > 0
        assert backend.plan.layout.mla == (arch == "deepseek_v3")
        text = render_chat(
            CHAT_TEMPLATE,
            [{"role": m.role, "content": m.content} for m in CHAT],
            bos_token=backend.bos_token,
            eos_token=backend.eos_token,
        )
        assert backend.render(CHAT) == text
        req = GenerationRequest(messages=CHAT, sampling=SamplingParams(0.0, max_tokens=10))
        tokens, final = run(backend, req)
        assert final.finish_reason in ("length", "stop") and final.token_ids
        assert final.token_ids == reference_greedy(path, final.prompt_token_ids, 10)
        assert "".join(e.text for e in tokens)
        line = next(x for x in backend.native.load_log if "llama_kv_cache: size =" in x)
        mib = float(line.split("size =")[1].split("MiB")[0])
        assert backend.plan.kv_bytes / 2**20 == pytest.approx(mib, abs=0.006)
    finally:
        backend.close()


def test_expert_override_on_a_llama_cpp_converted_file(foreign_gguf):
    from converters.formats.gguf_header import read_contents

    path = foreign_gguf("qwen3_moe")
    routed = {t.name for t in read_contents(path).tensors if "_exps." in t.name}
    backend = load(path, n_ctx=512, threads=2, cpu_moe=True)
    try:
        assert set(backend.expert_placement_report()["tensors_in_cpu_ram"]) == routed
    finally:
        backend.close()
