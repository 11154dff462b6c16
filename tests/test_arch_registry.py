"""The architecture registry: one place per family, found by name, asked by everything.

- No source file outside the family modules names a model_type (an AST scan of string
  constants in app/, engine/, converters/).
- Every fixture family is known; an alias (`kimi_k2`) converts, inspects and runs as the
  family it points to; a nested `text_config` is read as the flat config it wraps.
- A model type nobody knows gets the registry's one message from inspect's converter, the
  converter and the torch engine, and its advice names a way that works (llama.cpp's own
  converter or a GGUF from the hub, opened in the llama.cpp engine).
- A GGUF header is mapped back to its family for every fixture.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from converters import archs
from converters.conversion.convert import convert
from converters.core.errors import UnsupportedArchitecture
from converters.facts.inspection import inspect
from tests.fixtures.checkpoints import ARCHS

REPO = Path(__file__).resolve().parents[1]
FAMILY_FILES = {REPO / "converters" / "archs", REPO / "engine" / "torch" / "models"}
# Strings that equal a model_type but mean something else, each with where and why.
OTHER_MEANINGS = {
    # tokenizer.ggml.model "llama" is llama.cpp's name for a SentencePiece vocabulary
    ("converters/formats/gguf_tokenizer.py", "llama"),
    # "llama4" is also the hub's id of Meta's Llama 4 Community License
    ("converters/facts/licenses.py", "llama4"),
}


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_no_source_file_outside_the_family_modules_names_a_model_type():
    names = {name for family in archs.known() for name in archs.find(family).names}
    offenders = []
    for room in ("app", "engine", "converters"):
        for path in sorted((REPO / room).rglob("*.py")):
            if path.parent in FAMILY_FILES and path.stem in archs.known():
                continue  # a family's own module may name its family
            rel = str(path.relative_to(REPO))
            for text in _string_constants(path) & names:
                if (rel, text) not in OTHER_MEANINGS:
                    offenders.append(f"{rel}: {text!r}")
    assert offenders == []


def test_every_fixture_family_is_known_with_its_aliases():
    # a fixture may be an alias (kimi_k2): every one is found, and its family is known
    assert all(archs.find(arch) is not None for arch in ARCHS)
    assert {archs.find(arch).model_type for arch in ARCHS} <= set(archs.known())
    assert set(ARCHS) - {"kimi_k2"} <= set(archs.known())
    assert archs.find("kimi_k2") is archs.find("deepseek_v3")
    assert archs.find("kimi_k25") is archs.find("deepseek_v3")
    assert archs.find("mistral") is archs.find("llama")
    assert archs.find("no_such_model") is None


def _retyped(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps(edit(config)))
    return dest


def test_an_alias_converts_inspects_and_runs_as_its_family(hf_checkpoint, tmp_path):
    from engine.torch.backend import load

    kimi = _retyped(
        hf_checkpoint("deepseek_v3"), tmp_path / "kimi", lambda c: {**c, "model_type": "kimi_k2"}
    )
    ours, theirs = inspect(kimi), inspect(hf_checkpoint("deepseek_v3"))
    assert ours.arch == "kimi_k2"
    assert (ours.n_experts, ours.n_moe_layers, ours.active_params) == (
        theirs.n_experts,
        theirs.n_moe_layers,
        theirs.active_params,
    )
    gguf = convert(kimi, tmp_path / "kimi.gguf", "F32").path
    assert inspect(gguf).arch == "deepseek_v3"  # llama.cpp's deepseek2 with sigmoid gating
    backend = load(kimi, threads=1)
    try:
        assert backend.info.n_experts == theirs.n_experts
    finally:
        backend.close()


def test_a_nested_text_config_reads_as_the_flat_config(hf_checkpoint, tmp_path):
    flat = inspect(hf_checkpoint("qwen3_moe"))

    def nest(config):
        outer = {"model_type": config["model_type"], "architectures": config.get("architectures")}
        return {**outer, "text_config": {**config, "model_type": "qwen3_moe_text"}}

    nested = inspect(_retyped(hf_checkpoint("qwen3_moe"), tmp_path / "nested", nest))
    keys = (
        "arch",
        "n_experts",
        "experts_per_token",
        "n_moe_layers",
        "total_params",
        "active_params",
    )
    assert [getattr(nested, k) for k in keys] == [getattr(flat, k) for k in keys]


def test_an_unknown_model_type_gets_one_message_with_advice_that_works(hf_checkpoint, tmp_path):
    from engine.torch.backend import load

    odd = _retyped(
        hf_checkpoint("qwen3_moe"), tmp_path / "odd", lambda c: {**c, "model_type": "odd_moe"}
    )
    messages = set()
    for attempt in (
        lambda: convert(odd, tmp_path / "odd.gguf", "F32"),
        lambda: load(odd, threads=1),
    ):
        with pytest.raises(UnsupportedArchitecture) as caught:
            attempt()
        messages.add((caught.value.problem, caught.value.hint))
    assert len(messages) == 1
    problem, hint = messages.pop()
    assert "'odd_moe'" in problem and "qwen3_moe" in problem
    assert "convert_hf_to_gguf.py" in hint and "llama.cpp engine" in hint
    assert not (tmp_path / "odd.gguf").exists()
    # inspect still describes what it can read with the common field names
    assert inspect(odd).n_experts == inspect(hf_checkpoint("qwen3_moe")).n_experts


@pytest.mark.parametrize("arch", ARCHS)
def test_a_gguf_header_maps_back_to_its_family(arch, hf_checkpoint, tmp_path):
    from converters.formats.gguf_header import read_contents

    gguf = convert(hf_checkpoint(arch), tmp_path / f"{arch}.gguf", "F32").path
    # an alias's GGUF reads as its family (Kimi-K2 is DeepSeek-V3's computation)
    assert archs.family_from_gguf(read_contents(gguf).metadata) == archs.find(arch).model_type
