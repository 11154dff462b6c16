"""Only safetensors and GGUF are loaded; nothing is unpickled anywhere (issue #10).

Two checks. The source of app/, engine/ and converters/ is parsed (ast, so docstrings and
comments that *mention* pickle do not count) for every way Python code unpickles: the
pickle family of modules (pickle, cPickle, _pickle, dill, cloudpickle, joblib, shelve,
marshal), torch.load (a pickle reader even with weights_only, whose allow-list is a
moving target), numpy.load with allow_pickle=True, transformers' from_pretrained (which
reads pytorch_model.bin when it finds one) and trust_remote_code (runs the repository's
Python). Then a folder holding only a pytorch_model.bin whose pickle would create a marker
directory when unpickled is handed to inspect, the torch engine's loader and convert
(function and CLI): each refuses it with a message naming the pickled weights, and the
marker never appears.
"""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from converters.core.errors import ItamaeError

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("app", "engine", "converters")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal", "copyreg"}  # fmt: skip


def _sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")]
    assert len(files) > 30, "the source tree was not found"
    return files


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def unpickling_sites(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every construct in `tree` that can unpickle or run a model's code."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0] in PICKLE_MODULES]  # fmt: skip
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append((node.lineno, f"from {node.module} import"))
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                found.append((node.lineno, "from torch import load"))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            torch_load = name in ("torch.load", "torch.serialization.load")
            if torch_load or name.endswith("from_pretrained"):
                found.append((node.lineno, name))
            elif name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy"):
                value = keywords.get("allow_pickle")
                if isinstance(value, ast.Constant) and value.value is True:
                    found.append((node.lineno, f"{name}(allow_pickle=True)"))
                elif value is not None and not isinstance(value, ast.Constant):
                    found.append((node.lineno, f"{name}(allow_pickle=<computed>)"))
            value = keywords.get("trust_remote_code")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                found.append((node.lineno, "trust_remote_code"))
        elif isinstance(node, ast.Attribute) and _dotted(node).split(".")[0] in PICKLE_MODULES:
            found.append((node.lineno, _dotted(node)))  # pickle.loads, marshal.load, ...
    return found


def test_the_scanner_finds_every_way_to_unpickle():
    """The scanner itself, on code that does each thing (else the tree test proves nothing)."""
    bad = """
import pickle
from joblib import load as jl
import torch, numpy as np, transformers
torch.load("x.bin")
torch.load("x.bin", weights_only=True)
np.load("x.npy", allow_pickle=True)
numpy.load("x.npy", allow_pickle=flag)
transformers.AutoModel.from_pretrained("x")
AutoTokenizer.from_pretrained("x", trust_remote_code=True)
from torch import load
"""
    whats = sorted(what for _, what in unpickling_sites(ast.parse(bad)))
    assert whats == sorted([
        "import pickle", "from joblib import", "torch.load", "torch.load",
        "np.load(allow_pickle=True)", "numpy.load(allow_pickle=<computed>)",
        "transformers.AutoModel.from_pretrained", "AutoTokenizer.from_pretrained",
        "trust_remote_code", "from torch import load",
    ])  # fmt: skip
    safe = 'np.load("x.npy")\nnp.load("x.npy", allow_pickle=False)\n"""pickle in a docstring"""'
    assert unpickling_sites(ast.parse(safe)) == []


def test_no_source_file_unpickles_or_runs_model_code():
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [
            f"{path.relative_to(REPO)}:{line}: {what}" for line, what in unpickling_sites(tree)
        ]
    assert not found, "unpickling in the application:\n" + "\n".join(found)


class _Payload:
    """Unpickling this creates a directory: proof that something unpickled the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def pickled_only(tmp_path, hf_checkpoint) -> tuple[Path, Path]:
    """A real fixture model's config and tokenizer, with pytorch_model.bin instead of
    safetensors: the shape of an older hub repository."""
    source = hf_checkpoint("qwen3_moe")
    folder = tmp_path / "pickled-model"
    folder.mkdir()
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.suffix == ".json":
            (folder / f.name).write_bytes(f.read_bytes())
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    marker = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(marker)}))
    # the payload works: unpickling it (in a throwaway process) makes the marker
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))",
                    str(folder / "pytorch_model.bin")], check=False, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert marker.is_dir(), "the test payload does not do what it should"
    marker.rmdir()
    return folder, marker


def _refused(call) -> str:
    with pytest.raises(ItamaeError) as caught:
        call()
    return str(caught.value)


def test_pickled_checkpoint_is_refused_everywhere(pickled_only, tmp_path):
    from converters.conversion.convert import convert
    from converters.facts.inspection import inspect
    from engine.loader import load

    folder, marker = pickled_only
    messages = {
        "inspect": _refused(lambda: inspect(folder)),
        "torch engine": _refused(lambda: load(folder, engine="torch")),
        "convert": _refused(lambda: convert(folder, tmp_path / "out.gguf", "Q8_0")),
        "convert torch": _refused(
            lambda: convert(folder, tmp_path / "out-torch", "int8", fmt="torch")
        ),
    }
    for where, message in messages.items():
        assert "pickled" in message and "safetensors" in message, (where, message)
    assert not marker.exists(), "something unpickled pytorch_model.bin"
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "out-torch").exists()


def test_cli_convert_and_inspect_refuse_a_pickled_checkpoint(pickled_only, tmp_path):
    folder, marker = pickled_only
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for args in (["inspect", str(folder), "--json"],
                 ["convert", str(folder), "-o", str(tmp_path / "cli.gguf"), "--quant", "Q8_0"]):  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode != 0, args
        said = run.stdout + run.stderr
        assert "pickled" in said and "Traceback" not in said, said[-2000:]
    assert not marker.exists()
    assert not (tmp_path / "cli.gguf").exists()
