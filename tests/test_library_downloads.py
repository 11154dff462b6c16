"""Downloads with the real huggingface_hub client against a hub served on 127.0.0.1
(tests/hub_server.py): one quant of several, progress that ends at the total once, cancel,
resume after SIGKILL, checksums, the free-space check, and a cache huggingface_hub reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants as hub_constants

from app import library
from app.library import Machine, downloads, hub_search
from app.library.fit import hub_fit
from app.library.progress import DownloadProgress
from converters.conversion.convert import convert
from converters.core.errors import NotEnoughDisk
from engine.llamacpp.memory_plan import Hardware
from tests.hub_server import HubServer, Repo, RepoFile, files_from
from tests.planted_machine import DEMO_GGUF, DEMO_HF, sha256_file, split_gguf
from tests.serve_process import REPO, itamae_command

GGUF_REPO = "itamae-test/Demo-GGUF"
CARD = b"---\nlicense: apache-2.0\n---\n# Demo GGUF\n"


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    return build_repos(tmp_path_factory.mktemp("quants"))


def build_repos(build: Path) -> list[Repo]:
    """Hub repositories of real files: the demo's GGUF quants (Q8_0, Q4_0, an F16 split
    set, a projector) with its card; its safetensors beside pickled and other copies; one
    announcing 50 TB; a dense model."""
    build.mkdir(parents=True, exist_ok=True)
    convert(DEMO_HF, build / "Demo-Q4_0.gguf", "Q4_0")
    convert(DEMO_HF, build / "Demo-F16.gguf", "F16")
    shards = split_gguf(build / "Demo-F16.gguf", build / "Demo-F16.gguf.split", shards=2)
    gguf_files = [
        RepoFile("Demo-Q8_0.gguf", DEMO_GGUF.read_bytes()),
        RepoFile("Demo-Q4_0.gguf", (build / "Demo-Q4_0.gguf").read_bytes()),
        *[
            RepoFile(f"F16/Demo-F16-0000{i + 1}-of-00002.gguf", shard.read_bytes())
            for i, shard in enumerate(shards)
        ],
        RepoFile("mmproj-Demo-F16.gguf", DEMO_GGUF.read_bytes()[:1000]),
        RepoFile("README.md", CARD),
        RepoFile(".gitattributes", b"*.gguf filter=lfs\n"),
    ]
    safetensors_files = files_from(DEMO_HF) + [
        RepoFile("pytorch_model.bin", b"pickled weights: never fetched"),
        RepoFile("model.onnx", b"onnx: never fetched"),
        RepoFile("flax_model.msgpack", b"flax: never fetched"),
    ]
    huge = [RepoFile("Huge-Q8_0.gguf", DEMO_GGUF.read_bytes(), announce=50 * 10**12)]
    return [
        Repo(GGUF_REPO, gguf_files, tags=["gguf"], downloads=50, gguf={"architecture": "qwen3moe"}),
        Repo(
            "itamae-test/Demo",
            safetensors_files,
            sha="b" * 40,
            tags=["safetensors", "moe"],
            downloads=90,
            config={"model_type": "qwen3_moe"},
        ),
        Repo("itamae-test/Huge-GGUF", huge, sha="c" * 40, tags=["gguf"], downloads=10),
        Repo(
            "itamae-test/Dense",
            files_from(DEMO_HF),
            sha="d" * 40,
            tags=["safetensors"],
            downloads=70,
            config={"model_type": "llama"},
        ),
    ]


@pytest.fixture
def hub(repos, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # this test's own hub only
    with HubServer(repos) as server:
        yield server


def _pull(spec, hub, cache, progress=None):
    progress = progress or DownloadProgress()
    return downloads.pull(spec, progress, cache=cache, endpoint=hub.url), progress


def _fetched(hub) -> set[str]:
    return {s.path for s in hub.sent}


def test_one_quant_of_several_and_nothing_else(hub, tmp_path):
    seen = []
    progress = DownloadProgress()
    progress.listeners.append(lambda p: seen.append((p.done_bytes, p.total_bytes)))
    path, _ = _pull(f"{GGUF_REPO}:q4_0", hub, tmp_path, progress)
    assert path.name == "Demo-Q4_0.gguf" and path.is_symlink()
    assert _fetched(hub) == {"Demo-Q4_0.gguf", "README.md"}
    served = hub.repos[GGUF_REPO].files[1]
    assert sha256_file(path) == served.sha256
    total = len(served.data) + len(CARD)
    assert progress.total_bytes == total and seen[-1] == (total, total)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done.count(total) == 1  # never past it, reached once
    # huggingface_hub itself finds the files where it would have put them
    cached = huggingface_hub.try_to_load_from_cache(GGUF_REPO, "Demo-Q4_0.gguf", cache_dir=tmp_path)
    assert cached == str(path)
    info = huggingface_hub.scan_cache_dir(tmp_path)
    (repo,) = info.repos
    assert repo.repo_id == GGUF_REPO and repo.size_on_disk == total
    again, _ = _pull(f"{GGUF_REPO}:Q4_0", hub, tmp_path)  # already there: nothing fetched
    assert again == path and hub.bytes_sent("Demo-Q4_0.gguf") == len(served.data)


def test_a_split_set_is_one_choice(hub, tmp_path):
    path, progress = _pull(f"{GGUF_REPO}:F16", hub, tmp_path)
    assert path.name == "Demo-F16-00001-of-00002.gguf"
    assert _fetched(hub) == {
        "F16/Demo-F16-00001-of-00002.gguf",
        "F16/Demo-F16-00002-of-00002.gguf",
        "README.md",
    }
    assert progress.done_bytes == progress.total_bytes


def test_safetensors_without_pickles_or_other_formats(hub, tmp_path):
    path, _ = _pull("itamae-test/Demo", hub, tmp_path)
    wanted = {p.name for p in DEMO_HF.iterdir()} - {"training_summary.json"}  # not a model file
    assert {p.name for p in path.iterdir()} == wanted == _fetched(hub)
    for name in wanted:
        assert (path / name).read_bytes() == (DEMO_HF / name).read_bytes()


def test_which_quant_is_asked_when_several(hub, tmp_path):
    with pytest.raises(Exception, match=r"several quants.*Q8_0 .*itamae pull"):
        _pull(GGUF_REPO, hub, tmp_path)
    with pytest.raises(Exception, match="no 'Q3_K_S'"):
        _pull(f"{GGUF_REPO}:Q3_K_S", hub, tmp_path)
    assert not hub.sent and not list(tmp_path.iterdir())


def test_cancel_leaves_nothing_under_the_final_name_and_resumes(hub, tmp_path):
    hub.throttle_s = 0.002
    progress = DownloadProgress()
    progress.listeners.append(lambda p: p.done_bytes > 2_000_000 and p.cancel.set())
    with pytest.raises(Exception, match="cancelled"):
        _pull(f"{GGUF_REPO}:Q8_0", hub, tmp_path, progress)
    storage = downloads.storage_folder(tmp_path, GGUF_REPO)
    sha = hashlib.sha256(DEMO_GGUF.read_bytes()).hexdigest()
    assert not (storage / "blobs" / sha).exists()
    assert not list(storage.glob("snapshots/*/Demo-Q8_0.gguf"))
    partial = storage / "blobs" / f"{sha}.incomplete"
    assert 2_000_000 < partial.stat().st_size < DEMO_GGUF.stat().st_size
    hub.throttle_s = 0
    path, _ = _pull(f"{GGUF_REPO}:Q8_0", hub, tmp_path)
    assert sha256_file(path) == sha
    # per request, not a running total: the cancelled request's handler records its bytes
    # when it notices the client left, which can be after the resumed one began
    gets = [s for s in hub.sent if s.path == "Demo-Q8_0.gguf" and s.range.endswith("-")]
    starts = [int(s.range.removeprefix("bytes=").rstrip("-")) for s in gets]
    assert starts.count(0) == 1  # one download from the start: the resume did not restart
    resumed = [s for s, at in zip(gets, starts, strict=True) if at > 0]
    assert len(resumed) == 1 and resumed[0].bytes < DEMO_GGUF.stat().st_size


def test_a_damaged_download_is_deleted_not_kept(hub, tmp_path):
    served = hub.repos[GGUF_REPO].files[0]
    served.damaged = True  # what the CDN sends differs from what the listing says
    try:
        with pytest.raises(Exception, match="arrived damaged"):
            _pull(f"{GGUF_REPO}:Q8_0", hub, tmp_path)
    finally:
        served.damaged = False
    storage = downloads.storage_folder(tmp_path, GGUF_REPO)
    assert not [p for p in storage.rglob("*") if p.is_file() and p.stat().st_size > 1000]


def test_larger_than_the_free_space_is_refused_before_any_byte(hub, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(NotEnoughDisk) as refused:
        _pull("itamae-test/Huge-GGUF", hub, tmp_path)
    message = str(refused.value)
    assert "50.0 TB" in message and "free" in message
    assert f"{free / 1e12:.1f} TB" in message or f"{free / 1e9:.1f} GB" in message
    assert not hub.sent and not list(tmp_path.iterdir())


def test_sigkill_then_pull_again_resumes(hub, tmp_path):
    cache = tmp_path / "cache"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(cache),
        "PYTHONPATH": str(REPO),
    }
    env = {**os.environ, **env}
    sha = hashlib.sha256(DEMO_GGUF.read_bytes()).hexdigest()
    partial = downloads.storage_folder(cache, GGUF_REPO) / "blobs" / f"{sha}.incomplete"
    hub.throttle_s = 0.01  # ~6 MB/s: the kill lands mid-file
    proc = subprocess.Popen(
        itamae_command("pull", f"{GGUF_REPO}:Q8_0", "--json"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 1_500_000):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.wait()
    killed_at = partial.stat().st_size
    hub.throttle_s = 0
    done = subprocess.run(
        itamae_command("pull", f"{GGUF_REPO}:Q8_0", "--json"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (resumed,) = [s for s in hub.sent if s.range == f"bytes={killed_at}-"]
    assert resumed.bytes == DEMO_GGUF.stat().st_size - killed_at  # only the rest came down
    assert sha256_file(Path(result["path"])) == sha
    assert not partial.exists()


def test_fit_verdict_from_the_header_before_download(hub, tmp_path):
    commit, files = downloads.list_files(GGUF_REPO, hub.url)
    choice = next(c for c in hub_search.choices(files) if c.label == "F16")
    roomy = hub_fit(GGUF_REPO, commit, choice, Hardware.of(ram_gb=8, vram_gb=8), hub.url)
    assert roomy.verdict == "fits on GPU" and roomy.plan.layout.n_experts == 8
    cpu = hub_fit(GGUF_REPO, commit, choice, Hardware.of(ram_gb=8), hub.url)
    assert cpu.verdict == "fits in RAM"
    tiny = hub_fit(GGUF_REPO, commit, choice, Hardware.of(ram_gb=0.001), hub.url)
    assert tiny.verdict == "does not fit"
    # only headers were read: a few ranged requests, far less than the files
    assert hub.bytes_sent("F16/Demo-F16-00001-of-00002.gguf") == 0
    assert not list(tmp_path.iterdir())


def test_hub_search_filters_and_sorts(hub):
    found = hub_search.search("demo", endpoint=hub.url)
    assert [r.repo_id for r in found] == ["itamae-test/Demo", GGUF_REPO]  # by downloads
    assert found[0].is_moe and found[0].arch == "qwen3_moe"
    assert [r.repo_id for r in hub_search.search("", fmt="gguf", endpoint=hub.url)] == [
        GGUF_REPO,
        "itamae-test/Huge-GGUF",
    ]
    moe = hub_search.search("", moe_only=True, endpoint=hub.url)
    assert "itamae-test/Dense" not in [r.repo_id for r in moe]
    assert {r.repo_id for r in moe} == {"itamae-test/Demo", GGUF_REPO}
    assert not hub.sent  # searching lists; it downloads nothing


def test_pull_lists_quants_with_size_and_fit(hub, tmp_path):
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "PYTHONPATH": str(REPO),
        "HF_HUB_CACHE": str(tmp_path / "cache"),
    }
    listed = subprocess.run(
        itamae_command("pull", GGUF_REPO, "--list", "--json"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    rows = {r["quant"]: r for r in json.loads(listed.stdout)["quants"]}
    assert set(rows) == {"Q4_0", "Q8_0", "F16", "mmproj-F16"}
    assert rows["Q8_0"]["size_bytes"] == DEMO_GGUF.stat().st_size + len(CARD)
    assert rows["F16"]["fit"] in ("fits on GPU", "fits in RAM", "experts in RAM")
    asked = subprocess.run(
        itamae_command("pull", GGUF_REPO),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert asked.returncode == 2 and "several quants" in asked.stderr and "Q4_0" in asked.stderr
    assert not (tmp_path / "cache").exists()


def test_deleting_one_quant_keeps_the_others(hub, tmp_path):
    cache = tmp_path / "hub"
    q4, _ = _pull(f"{GGUF_REPO}:Q4_0", hub, cache)
    f16, _ = _pull(f"{GGUF_REPO}:F16", hub, cache)
    machine = Machine(tmp_path, {"HF_HUB_CACHE": str(cache)}, ollama_system_store=None)
    entries = {e.name: e for e in library.scan(tmp_path / "models", [], machine=machine)}
    q4_entry = entries[f"{GGUF_REPO}/Demo-Q4_0.gguf"]
    blob = q4.resolve()
    assert library.delete(q4_entry, tmp_path / "models") == "deleted"
    assert not q4.exists() and not q4.is_symlink() and not blob.exists()
    assert sha256_file(f16) == hub.repos[GGUF_REPO].files[2].sha256  # the F16 set stays
    (repo,) = huggingface_hub.scan_cache_dir(cache).repos
    assert {f.file_name for rev in repo.revisions for f in rev.files} == {
        "Demo-F16-00001-of-00002.gguf",
        "Demo-F16-00002-of-00002.gguf",
        "README.md",
    }
