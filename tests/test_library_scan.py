"""The library finds the models other tools keep (planted in a temporary home with real
GGUF and safetensors files), names each once, and changes nothing in their folders."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from app import library
from app.library.sources import Machine
from converters.core.errors import ItamaeError
from tests.planted_machine import DEMO_GGUF, plant_machine, snapshot
from tests.serve_process import REPO, ServeProcess, itamae_command

EXPECTED = {
    # name: (source, format, kind)
    "demo": ("itamae", "hf", "model"),
    "demo/itamae-demo-Q8_0.gguf": ("itamae", "gguf", "model"),
    "my-demo-copy": ("itamae", "hf", "model"),
    "itamae/demo": ("hf-cache", "hf", "model"),
    "itamae/demo-GGUF/itamae-demo-Q8_0.gguf": ("hf-cache", "gguf", "model"),
    "lmstudio-community/Itamae-Demo-GGUF/itamae-demo-Q8_0.gguf": ("lmstudio", "gguf", "model"),
    "lmstudio-community/Itamae-Demo-GGUF/mmproj-demo-F16.gguf": ("lmstudio", "gguf", "projector"),
    "lmstudio/itamae/demo-GGUF/itamae-demo-Q8_0.gguf": ("lmstudio", "gguf", "model"),
    "someone/Demo-Split-GGUF/demo-split-00001-of-00002.gguf": ("lmstudio", "gguf", "model"),
    "itamae-demo:q8_0": ("ollama", "gguf", "model"),
    "someone/tiny:latest": ("ollama", "gguf", "model"),
    "added-demo.gguf": ("added", "gguf", "model"),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return plant_machine(tmp_path_factory.mktemp("machine") / "home")


def _scan(planted):
    machine = Machine(planted.home, planted.env, ollama_system_store=None)
    return library.scan(planted.models_dir, [str(planted.added)], machine=machine)


def test_every_place_is_found_with_its_own_names(planted):
    before = snapshot(planted.home)
    entries = {e.name: e for e in _scan(planted)}
    assert {n: (e.source, e.format, e.kind) for n, e in entries.items()} == EXPECTED
    split = entries["someone/Demo-Split-GGUF/demo-split-00001-of-00002.gguf"]
    assert [f.name for f in split.files] == [
        "demo-split-00001-of-00002.gguf",
        "demo-split-00002-of-00002.gguf",
    ]
    ollama = entries["itamae-demo:q8_0"]
    assert ollama.path.name.startswith("sha256-") and ollama.projector is not None
    assert entries["someone/tiny:latest"].projector is None
    for name in ("itamae-demo:q8_0", "lmstudio-community/Itamae-Demo-GGUF/itamae-demo-Q8_0.gguf"):
        info = entries[name].info  # read by content: an Ollama blob has no .gguf suffix
        assert (info.arch, info.n_experts, info.quant) == ("qwen3_moe", 8, "Q8_0"), name
    assert entries["itamae/demo"].info.arch == "qwen3_moe"
    assert entries["demo"].to_json()["display_name"] == "Itamae demo"
    assert snapshot(planted.home) == before


def test_names_are_stable_and_resolve(planted):
    machine = Machine(planted.home, planted.env, ollama_system_store=None)
    first = [
        f.name for f in library.find(planted.models_dir, [str(planted.added)], machine=machine)
    ]
    again = [
        f.name for f in library.find(planted.models_dir, [str(planted.added)], machine=machine)
    ]
    assert first == again and len(set(first)) == len(first)
    found = library.resolve("itamae-demo:q8_0", planted.models_dir, [], machine)
    assert found.source == "ollama" and found.format == "gguf"
    with pytest.raises(ItamaeError, match="projector"):
        library.resolve(
            "lmstudio-community/Itamae-Demo-GGUF/mmproj-demo-F16.gguf",
            planted.models_dir,
            [],
            machine,
        )
    with pytest.raises(ItamaeError, match="itamae models"):
        library.resolve("no-such-model:7b", planted.models_dir, [], machine)


def test_itamae_models_json_lists_the_planted_machine(planted):
    before = snapshot(planted.home)
    out = subprocess.run(
        itamae_command("models", "--json"),
        cwd=REPO,
        env=planted.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    items = {item["name"]: item for item in json.loads(out.stdout)}
    assert {n: (i["source"], i["format"], i["kind"]) for n, i in items.items()} == EXPECTED
    gguf = items["itamae/demo-GGUF/itamae-demo-Q8_0.gguf"]
    assert (gguf["architecture"], gguf["experts"], gguf["quantization"]) == ("qwen3_moe", 8, "Q8_0")
    assert gguf["size_bytes"] == DEMO_GGUF.stat().st_size
    assert snapshot(planted.home) == before


def _generate(planted, model: str, *extra: str) -> dict:
    out = subprocess.run(
        itamae_command(
            "generate", "--model", model, "--prompt", "Hello", "--max-tokens", "8", "--json", *extra
        ),
        cwd=REPO,
        env=planted.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_generate_loads_each_by_its_name(planted):
    before = snapshot(planted.home)
    reference = _generate(planted, str(DEMO_GGUF), "--engine", "llamacpp")
    for name in (
        "itamae-demo:q8_0",  # an Ollama blob: no suffix, found by content
        "someone/Demo-Split-GGUF/demo-split-00001-of-00002.gguf",  # two shards
        "lmstudio/itamae/demo-GGUF/itamae-demo-Q8_0.gguf",
    ):
        result = _generate(planted, name)
        assert result["tokens"] == reference["tokens"] and result["tokens"], name
    torch_reference = _generate(planted, "demo", "--engine", "torch")
    assert _generate(planted, "itamae/demo")["tokens"] == torch_reference["tokens"]
    assert snapshot(planted.home) == before


def test_serve_answers_under_the_library_name(planted, monkeypatch):
    for key, value in planted.env.items():
        monkeypatch.setenv(key, value)
    name = "lmstudio-community/Itamae-Demo-GGUF/itamae-demo-Q8_0.gguf"
    with ServeProcess("--model", name) as server:
        assert server.model_id == name
        reply = httpx.post(
            server.url + "/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == name


def test_other_tools_models_are_never_deleted(planted):
    before = snapshot(planted.home)
    entries = {e.name: e for e in _scan(planted)}
    for name, tool in (("itamae-demo:q8_0", "ollama rm"), ("someone/tiny:latest", "ollama rm")):
        with pytest.raises(ItamaeError, match=tool):
            library.delete(entries[name], planted.models_dir)
    lm = entries["lmstudio-community/Itamae-Demo-GGUF/itamae-demo-Q8_0.gguf"]
    with pytest.raises(ItamaeError, match="LM Studio"):
        library.delete(lm, planted.models_dir)
    assert library.delete(entries["added-demo.gguf"], planted.models_dir) == "forgotten"
    assert snapshot(planted.home) == before
