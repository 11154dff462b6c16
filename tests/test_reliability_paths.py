"""Model names and ids from the UI or the API can't escape the models folder (issue #10).

Where a name from outside becomes a path or an action on one:
- the API's `model` field and /v1/models/{id}: only ever compared with the served model's
  id (app/api/openai.py `_backend_for`); a path there is a 404 and loads nothing;
- the Models tab's delete (app/library.delete): only under the models folder, after
  resolving `..` and symlinks; a link inside the folder to something outside is refused,
  and a model folder holding links to outside files loses the links, not their targets;
- the Models tab's download (app/library.download, downloads.parse_spec): a repository id
  becomes one folder directly inside the Hugging Face cache, or is refused.
tests/test_ui_library.py already checks an absolute outside path and "../../etc"; these
add `..` inside a path, symlinks, the folder itself, and the API.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from app import library
from app.library.downloads import parse_spec, storage_folder
from converters.core.errors import ItamaeError
from tests.serve_process import ServeProcess

pytest.importorskip("llama_cpp")
EMPTY_HOME = library.Machine(Path("/nonexistent-home"), {}, ollama_system_store=None)


@pytest.fixture
def layout(tmp_path, hf_checkpoint):
    """models/ with one real model; outside/ with a model and a file that must survive."""
    models = tmp_path / "models"
    outside = tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    shutil.copytree(hf_checkpoint("mixtral"), outside / "precious-model")
    (outside / "notes.txt").write_text("keep me")
    shutil.copytree(hf_checkpoint("mixtral"), models / "tiny")
    return models, outside


def _intact(outside) -> bool:
    return (outside / "notes.txt").read_text() == "keep me" and (
        outside / "precious-model" / "config.json"
    ).is_file()


def test_delete_refuses_dot_dot_paths_and_the_folder_itself(layout):
    models, outside = layout
    for path in (
        models / ".." / "outside" / "precious-model",
        models / "tiny" / ".." / ".." / "outside",
        models / "tiny" / ".." / ".." / "outside" / "notes.txt",
        models,
        models / ".",
        models / "tiny" / "..",
    ):
        entry = library.LibraryEntry(path, "itamae", "hostile")
        with pytest.raises(ItamaeError, match="not inside the models folder"):
            library.delete(entry, models)
    assert _intact(outside) and (models / "tiny" / "config.json").is_file()


def test_delete_refuses_a_symlink_to_outside_listed_in_the_models_folder(layout):
    models, outside = layout
    (models / "linked-model").symlink_to(outside / "precious-model", target_is_directory=True)
    (models / "linked.gguf").symlink_to(outside / "notes.txt")
    entries = {e.name: e for e in library.scan(models, [], machine=EMPTY_HOME)}
    assert entries["linked-model"].source == "itamae"  # the scan lists it like any model
    with pytest.raises(ItamaeError, match="not inside the models folder"):
        library.delete(entries["linked-model"], models)
    with pytest.raises(ItamaeError, match="not inside the models folder"):
        library.delete(library.LibraryEntry(models / "linked.gguf", "itamae", "x"), models)
    assert _intact(outside)


def test_deleting_a_model_removes_links_inside_it_not_their_targets(layout):
    models, outside = layout
    (models / "tiny" / "extra.safetensors").symlink_to(outside / "notes.txt")
    (models / "tiny" / "more").symlink_to(outside / "precious-model", target_is_directory=True)
    (entry,) = [e for e in library.scan(models, [], machine=EMPTY_HOME) if e.name == "tiny"]
    assert library.delete(entry, models) == "deleted"
    assert not (models / "tiny").exists()
    assert _intact(outside)


def test_downloaded_repositories_land_directly_inside_the_hf_cache(tmp_path):
    cache = tmp_path / "hub"
    for repo_id in ("Qwen/Qwen3-30B-A3B", "owner/x.y", "a/b-c"):
        folder = storage_folder(cache, parse_spec(repo_id)[0])
        assert folder.parent == cache and folder.name.startswith("models--"), repo_id
    for bad in (
        "../x",
        "a/../../b",
        "..\\../x",
        "/etc/passwd",
        "a/b/c",
        "..",
        "owner/..",
        "~/x/..",
    ):
        progress = library.DownloadProgress()
        library.download(bad, progress)
        assert progress.finished and "not a hub repository id" in progress.error, bad
    assert not cache.exists()


# -- the API ------------------------------------------------------------------------------

HOSTILE_IDS = [
    "../../../../etc/passwd",
    "/etc/passwd",
    "~/.ssh/id_rsa",
    "..",
    "assets/demo/../../README.md",
    "file:///etc/passwd",
    "http://127.0.0.1:9/v1",
]


@pytest.fixture(scope="module")
def served_gguf(hf_checkpoint, tmp_path_factory):
    from converters.conversion.convert import convert

    path = tmp_path_factory.mktemp("paths") / "tiny-Q8_0.gguf"
    convert(hf_checkpoint("qwen3_moe"), path, "Q8_0")
    with ServeProcess("--model", str(path), "--engine", "llamacpp") as server:
        yield server


def test_api_model_ids_that_are_paths_load_nothing(served_gguf):
    server = served_gguf
    before = httpx.get(server.root + "/health").json()
    for model_id in HOSTILE_IDS:
        for route, body in (
            ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/completions", {"prompt": "hi"}),
        ):
            r = httpx.post(
                server.url + route, json={**body, "model": model_id, "max_tokens": 2}, timeout=60
            )
            assert r.status_code == 404, (model_id, r.status_code, r.text[:200])
            assert r.json()["error"]["code"] == "model_not_found"
            assert "passwd" not in r.text or model_id in r.text  # echoes the id, nothing read
    # path-style ids in the URL, with the dots and slashes encoded so no client folds them
    for raw in ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        r = httpx.get(server.url + "/models/" + raw, timeout=30)
        assert r.status_code == 404, (raw, r.status_code, r.text[:200])
        assert "root:" not in r.text
    after = httpx.get(server.root + "/health").json()
    assert before["source"] and after["source"] == before["source"] and server.alive()
    assert after["state"] == before["state"]
    assert httpx.get(server.url + "/models").json()["data"][0]["id"] == server.model_id


def test_the_served_id_still_works(served_gguf):
    server = served_gguf
    r = httpx.post(
        server.url + "/chat/completions",
        json={
            "model": server.model_id,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        },
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


# -- the Convert tab's output name ---------------------------------------------------------


def _convert_handler(tmp_path):
    """The Convert tab's start handler as the UI registers it (app/ui/convert.py ConvertTab.on_start),
    on an app whose models folder is tmp_path/models."""
    from app.context import AppContext
    from app.model_manager import ModelManager
    from app.settings import AppPaths
    from app.ui.page import build_ui

    ctx = AppContext.create(ModelManager(), AppPaths(tmp_path / "home"))
    ctx.settings.update(models_dir=str(tmp_path / "models"))
    blocks = build_ui(ctx)
    (handler,) = [f.fn for f in blocks.fns.values() if getattr(f.fn, "__name__", "") == "on_start"]
    return handler


def test_convert_output_names_stay_in_the_models_folder(tmp_path, hf_checkpoint):
    handler = _convert_handler(tmp_path)
    source = str(hf_checkpoint("qwen3_moe"))
    models = tmp_path / "models"
    hostile = ["../escape.gguf", str(tmp_path / "abs.gguf"), "sub/x.gguf", "..", ".hidden.gguf",
               "../../etc/x", "~/x.gguf"]  # fmt: skip
    for name in hostile:
        list(handler(source, "Q8_0", "gguf", name, "en"))  # refused: a warning, no job
    assert not any(models.iterdir()), [p.name for p in models.iterdir()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "models"]
    # the same handler with a plain name converts (so the refusals above were real ones)
    list(handler(source, "Q8_0", "gguf", "plain.gguf", "en"))
    assert [p.name for p in models.iterdir()] == ["plain.gguf"]
