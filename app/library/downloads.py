"""Downloading one quant (or the safetensors) of a hub repository into the shared
Hugging Face cache, resumable, checked, cancellable.

Through huggingface_hub: `HfApi.model_info(files_metadata=True)` lists the files with
their sizes and checksums, `hf_hub_url` and the hub's own HTTP session fetch them, and the
files land in the cache layout huggingface_hub, transformers and every tool built on them
read (https://huggingface.co/docs/huggingface_hub/guides/manage-cache):
`models--org--name/blobs/<etag>`, `snapshots/<commit>/<file>` (a relative link to the
blob) and `refs/main`. Not `hf_hub_download` itself: in huggingface_hub 2.4 it writes each
file to a name unique to the process and deletes it on failure, so a download that was
killed starts again from zero, and it checks sizes but not checksums.

Here a file is written to `blobs/<etag>.incomplete` (the name earlier huggingface_hub
releases resumed from) under the same lock file huggingface_hub takes, continued with an
HTTP Range request after a cancel or a kill, and renamed to its final name only once its
SHA-256 (LFS files) or git blob id (small files) matches what the hub listed. The free
space is checked against what is left to fetch before the first byte is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import httpx2
from filelock import FileLock
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from converters.core.errors import Cancelled, ItamaeError, NotEnoughDisk

from .hub_files import Choice, HubFile, choose
from .progress import DownloadProgress, human_bytes

CHUNK_BYTES = 1 << 20  # one write per MiB: cancel answers within a MiB, and few syscalls
HASH_READ_BYTES = 16 << 20


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`org/name[:QUANT]` -> (repo id, quant or None), refused unless it is a repo id."""
    repo_id, _, quant = spec.strip().partition(":")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or ".." in repo_id or repo_id.startswith("."):
        raise ItamaeError(
            f"{spec!r} is not a hub repository id.",
            "Use the form owner/name[:QUANT], e.g. unsloth/Qwen3-30B-A3B-GGUF:Q4_K_M.",
        )
    return repo_id, quant or None


def list_files(repo_id: str, endpoint: str | None = None) -> tuple[str, list[HubFile]]:
    """(commit, files) of the repository's main branch, one request."""
    info = HfApi(endpoint=endpoint).model_info(repo_id, files_metadata=True)
    files = [
        HubFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None, s.blob_id or "")
        for s in info.siblings or []
    ]
    return str(info.sha), files


def storage_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _have(storage: Path, commit: str, f: HubFile) -> int:
    """Bytes of `f` already on disk: all of it, or the part an earlier download left."""
    if (storage / "snapshots" / commit / f.path).exists() or (storage / "blobs" / f.etag).exists():
        return f.size
    partial = storage / "blobs" / f"{f.etag}.incomplete"
    return min(partial.stat().st_size, f.size) if partial.exists() else 0


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_space(cache: Path, needed: int) -> None:
    where = _existing_parent(cache)
    free = shutil.disk_usage(where).free
    if needed > free:
        raise NotEnoughDisk(
            f"This download needs {human_bytes(needed)} more in {cache}, but only "
            f"{human_bytes(free)} is free there.",
            "Free some space, pick a smaller quant, or point HF_HUB_CACHE at a bigger disk.",
        )


def _hasher(f: HubFile):
    """SHA-256 for LFS files; git's blob id (sha1 of "blob <size>\\0" + content) otherwise."""
    if f.sha256:
        return hashlib.sha256()
    hasher = hashlib.sha1()
    hasher.update(b"blob %d\0" % f.size)
    return hasher


def _hash_existing(partial: Path, hasher) -> None:
    with partial.open("rb") as src:
        while chunk := src.read(HASH_READ_BYTES):
            hasher.update(chunk)


def _fetch(url: str, partial: Path, f: HubFile, progress: DownloadProgress) -> None:
    """Append the rest of `f` to `partial` (a Range request from where it stopped)."""
    hasher = _hasher(f)
    start = partial.stat().st_size if partial.exists() else 0
    if start > f.size:
        partial.unlink()
        start = 0
    if start:
        _hash_existing(partial, hasher)
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # the bytes themselves, so sizes and ranges hold
    if start < f.size:
        headers["Range"] = f"bytes={start}-"
        with get_session().stream("GET", url, headers=headers, follow_redirects=True) as r:
            hf_raise_for_status(r)
            mode = "ab"
            if start and r.status_code != 206:  # the server sent the whole file again
                progress.add(-start)
                hasher, mode = _hasher(f), "wb"
            with partial.open(mode) as out:
                for chunk in r.iter_bytes(CHUNK_BYTES):
                    if progress.cancel.is_set():
                        raise Cancelled("The download was cancelled.", "Pull again to resume it.")
                    out.write(chunk)
                    hasher.update(chunk)
                    progress.add(len(chunk))
                out.flush()
                os.fsync(out.fileno())
    got = hasher.hexdigest()
    if got != f.etag or partial.stat().st_size != f.size:
        partial.unlink()
        raise ItamaeError(
            f"{f.path} arrived damaged (checksum {got[:12]}…, the hub lists {f.etag[:12]}…); "
            "it was deleted.",
            "Pull again; if it fails the same way, the hub copy or a proxy is at fault.",
        )


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks here (Windows without developer mode): a hard link
        os.link(blob, pointer)


def _download_file(
    repo_id: str, commit: str, f: HubFile, storage: Path, progress: DownloadProgress, endpoint
) -> None:
    pointer = storage / "snapshots" / commit / f.path
    if pointer.exists():
        return
    blob = storage / "blobs" / f.etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = storage.parent / ".locks" / storage.name / f"{f.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):  # the lock hf_hub_download takes for the same blob
        if not blob.exists():
            partial = blob.with_name(f"{f.etag}.incomplete")
            _fetch(
                hf_hub_url(repo_id, f.path, revision=commit, endpoint=endpoint),
                partial,
                f,
                progress,
            )
            os.replace(partial, blob)
        _link(blob, pointer)


def _write_ref(storage: Path, commit: str) -> None:
    ref = storage / "refs" / "main"
    if ref.is_file() and ref.read_text(encoding="utf-8").strip() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(".main.tmp")
    tmp.write_text(commit, encoding="utf-8")
    os.replace(tmp, ref)


def plan(spec: str, endpoint: str | None = None) -> tuple[str, str, Choice]:
    """(repo id, commit, what `spec` downloads), asking the hub for the file list."""
    repo_id, quant = parse_spec(spec)
    commit, files = list_files(repo_id, endpoint)
    return repo_id, commit, choose(repo_id, files, quant)


def pull(
    spec: str,
    progress: DownloadProgress,
    cache: Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download `org/name[:QUANT]` into the cache; returns the model's path there (the
    snapshot folder, or the GGUF file / first shard)."""
    from huggingface_hub import constants

    cache = Path(cache or constants.HF_HUB_CACHE)
    repo_id, commit, choice = plan(spec, endpoint)
    storage = storage_folder(cache, repo_id)
    have = sum(_have(storage, commit, f) for f in choice.files)
    check_space(cache, choice.size - have)
    progress.label = choice.label
    progress.start(choice.size, have)
    for f in choice.files:
        _download_file(repo_id, commit, f, storage, progress, endpoint)
    _write_ref(storage, commit)
    snapshot = storage / "snapshots" / commit
    model = snapshot / choice.weights[0].path if choice.label != "safetensors" else snapshot
    progress.path = model
    return model


def is_network_error(error: BaseException) -> bool:
    """True when the hub could not be reached at all (offline mode, DNS, refused, timeout)."""

    seen = error
    while seen is not None:
        if isinstance(
            seen, (OfflineModeIsEnabled, httpx2.TransportError, ConnectionError, TimeoutError)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def pull_reporting(spec: str, progress: DownloadProgress, **options) -> None:
    """`pull` for a background thread: what went wrong goes into `progress.error`
    ("offline", "not-found: ...", "cancelled" or the message), never out of the thread."""

    try:
        pull(spec, progress, **options)
    except Cancelled:
        progress.error = "cancelled"
    except (RepositoryNotFoundError, GatedRepoError) as e:
        progress.error = f"not-found: {type(e).__name__}"
    except ItamaeError as e:
        progress.error = str(e)
    except Exception as e:  # the thread must report, not die silently
        progress.error = "offline" if is_network_error(e) else f"{type(e).__name__}: {e}"
    finally:
        progress.finished = True
