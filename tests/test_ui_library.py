"""The models tab's library: what is found where, what inspect says about it, deleting
only what Itamae may delete, and a clear message when the hub cannot be reached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app import library
from app.i18n import Translator
from app.ui.library_view import details_markdown, download_html
from app.ui.models import load_options
from converters.core.errors import ItamaeError
from engine.loader import DEMO_DIR

EMPTY_HOME = library.Machine(Path("/nonexistent-home"), {}, ollama_system_store=None)


@pytest.fixture
def models_dir(tmp_path, hf_checkpoint):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(hf_checkpoint("mixtral"), folder / "tiny-mixtral")
    (folder / ".partial-download").mkdir()  # in progress: not listed
    return folder


def test_scan_lists_each_model_once_with_what_inspect_knows(models_dir, hf_checkpoint, tmp_path):
    added = hf_checkpoint("qwen3_moe")
    entries = library.scan(
        models_dir, [str(added), str(tmp_path / "gone")], loaded=str(added), machine=EMPTY_HOME
    )
    by_name = {e.name: e for e in entries if not e.bundled}
    assert set(by_name) == {"tiny-mixtral", "qwen3_moe"}
    assert by_name["qwen3_moe"].source == "added"  # listed once, though also loaded
    mixtral = by_name["tiny-mixtral"].info
    assert (mixtral.arch, mixtral.format) == ("mixtral", "hf")
    assert mixtral.n_experts >= 8 and 0 < mixtral.active_params < mixtral.total_params
    text = details_markdown(by_name["tiny-mixtral"], Translator("ja"))
    assert "mixtral" in text and "総パラメータ数" in text


def test_delete_only_inside_the_models_folder(models_dir, hf_checkpoint, tmp_path):
    entries = library.scan(models_dir, [], machine=EMPTY_HOME)
    (mixtral,) = [e for e in entries if e.source == "itamae" and not e.bundled]
    assert library.delete(mixtral, models_dir) == "deleted"
    assert not (models_dir / "tiny-mixtral").exists()

    outside = library.LibraryEntry(hf_checkpoint("qwen3_moe"), "itamae", "escape")
    with pytest.raises(ItamaeError, match="not inside the models folder"):
        library.delete(outside, models_dir)
    assert hf_checkpoint("qwen3_moe").exists()
    added = library.LibraryEntry(hf_checkpoint("qwen3_moe"), "added", "qwen3_moe")
    assert library.delete(added, models_dir) == "forgotten"  # files untouched
    assert hf_checkpoint("qwen3_moe").exists()
    with pytest.raises(ItamaeError, match="demo"):
        library.delete(library.LibraryEntry(DEMO_DIR / "hf", "itamae", "demo"), models_dir)


def test_download_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    # A closed local port stands in for "no network": nothing leaves this machine.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    progress = library.DownloadProgress()
    library.download("Qwen/Qwen3-30B-A3B", progress)
    assert progress.finished and progress.error == "offline"
    html = download_html(progress, "Qwen/Qwen3-30B-A3B", Translator("en"))
    assert "offline" in html and "add it with its path" in html
    assert not (tmp_path / "models" / "Qwen__Qwen3-30B-A3B" / "config.json").exists()


def test_download_refuses_what_is_not_a_repo_id(tmp_path):
    for bad in ("", "no-slash", "../../etc", "a/b/c"):
        progress = library.DownloadProgress()
        library.download(bad, progress)
        assert progress.finished and "not a hub repository id" in progress.error


def test_load_options_pass_only_what_was_set():
    assert load_options(0, -1, -1, 0) == {}
    assert load_options(4096, 20, 8, 2.5) == {
        "context_length": 4096,
        "gpu_layers": 20,
        "cpu_moe": 8,
        "expert_budget": 2_500_000_000,
    }
