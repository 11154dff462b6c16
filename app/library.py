"""The models on this machine: Itamae's models folder, the Hugging Face cache, paths the
person added, and the bundled demo; plus downloading from the hub and deleting.

What each model is comes from `converters.facts.inspection.inspect(path)` (headers only, so a
scan is fast). Only files the person can get back are deleted: things inside Itamae's
models folder or the Hugging Face cache. An added path is only forgotten, never removed
from disk, and the demo ships with the program.
"""

from __future__ import annotations

import io
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from converters.core.errors import ItamaeError
from converters.core.model_info import ModelInfo
from converters.formats.detect import source_format
from engine.loader import DEMO_DIR

LOCATIONS = ("demo", "models", "hf-cache", "added", "loaded")
# What a download fetches: weights, configs and tokenizers; not the pickled or
# framework-specific copies many repositories carry beside the safetensors.
DOWNLOAD_PATTERNS = ["*.safetensors", "*.json", "*.gguf", "*.model", "*.txt", "*.md", "*.jinja",
                     "LICENSE*", "tokenizer*"]  # fmt: skip


@dataclass
class LibraryEntry:
    path: Path
    location: str  # one of LOCATIONS
    name: str
    info: ModelInfo | None = None
    problem: str = ""  # why inspect could not read it

    @property
    def key(self) -> str:
        return str(self.path)


def _is_model(path: Path) -> bool:
    return source_format(path) in ("gguf", "hf", "torch")


def _models_in(folder: Path) -> list[Path]:
    """Model folders and .gguf files directly in `folder`, or one level down (a folder
    of GGUF quants of one model)."""
    if not folder.is_dir():
        return []
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue  # partial downloads and conversions in progress
        if _is_model(child):
            found.append(child)
        elif child.is_dir():
            found += [g for g in sorted(child.glob("*.gguf")) if not g.name.startswith(".")]
    return found


def _hf_cache_models() -> list[tuple[Path, str]]:
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # no cache yet, or an unreadable one: nothing to list
        return []
    found = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        latest = max(repo.revisions, key=lambda r: r.last_modified)
        snapshot = Path(latest.snapshot_path)
        if _is_model(snapshot):
            found.append((snapshot, repo.repo_id))
        found += [(g, f"{repo.repo_id}/{g.name}") for g in sorted(snapshot.glob("*.gguf"))]
    return found


def inspect_model(path: Path) -> tuple[ModelInfo | None, str]:
    """What converters.facts.inspection says, or why it could not say (the list shows the reason
    instead of failing as a whole)."""
    try:
        from converters.facts.inspection import inspect

        return inspect(path), ""
    except ItamaeError as e:
        return None, str(e)
    except Exception as e:  # a model file nobody anticipated must not break the list
        return None, f"{type(e).__name__}: {e}"


def scan(
    models_dir: Path,
    added_paths: list[str],
    loaded: str | None = None,
    include_hf_cache: bool = True,
) -> list[LibraryEntry]:
    """Every model on this machine, each once; `loaded` (the model in use, which may have
    come from `--model` anywhere on disk) is listed too."""
    entries: list[LibraryEntry] = []
    seen: set[Path] = set()

    def add(path: Path, location: str, name: str) -> None:
        resolved = path.resolve()
        if resolved in seen:
            return
        seen.add(resolved)
        info, problem = inspect_model(path)
        entries.append(LibraryEntry(path, location, name, info, problem))

    for path in _models_in(DEMO_DIR):
        add(path, "demo", "demo" if path.is_dir() else f"demo/{path.name}")
    for path in _models_in(models_dir):
        add(path, "models", path.relative_to(models_dir).as_posix())
    if include_hf_cache:
        for path, name in _hf_cache_models():
            add(path, "hf-cache", name)
    for text in added_paths:
        path = Path(text).expanduser()
        if path.exists():
            add(path, "added", path.name)
    if loaded and loaded != "demo" and Path(loaded).exists():
        add(Path(loaded), "loaded", Path(loaded).name)
    return entries


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def delete(entry: LibraryEntry, models_dir: Path) -> str:
    """Remove a model; returns what was done ("deleted" | "forgotten")."""
    if entry.location == "demo":
        raise ItamaeError("The demo model ships with Itamae and cannot be deleted.", "")
    if entry.location in ("added", "loaded"):
        return "forgotten"
    if entry.location == "models":
        target = entry.path.resolve()
        root = models_dir.resolve()
        if root not in target.parents:
            raise ItamaeError(f"{target} is not inside the models folder {root}.", "")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
        return "deleted"
    if entry.location == "hf-cache":
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
        snapshot = entry.path if entry.path.is_dir() else entry.path.parent
        hashes = [
            rev.commit_hash
            for repo in cache.repos
            for rev in repo.revisions
            if Path(rev.snapshot_path) == snapshot
        ]
        cache.delete_revisions(*hashes).execute()
        return "deleted"
    raise ItamaeError(f"Unknown model location {entry.location!r}.", "")


def local_name(repo_id: str) -> str:
    """The folder a hub repository downloads into: "Qwen/Qwen3-30B-A3B" -> "Qwen__Qwen3-30B-A3B"."""
    return repo_id.strip().replace("/", "__")


@dataclass
class DownloadProgress:
    """Shared between the download thread and the UI that polls it."""

    done_bytes: int = 0
    total_bytes: int = 0
    finished: bool = False
    error: str = ""
    path: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def fraction(self) -> float | None:
        return self.done_bytes / self.total_bytes if self.total_bytes else None


def _progress_tqdm(progress: DownloadProgress):
    """A tqdm class that adds every bar's bytes into `progress` (huggingface_hub opens
    one bar per file plus one for the file count)."""
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()  # counted here, shown by the UI, printed nowhere
            super().__init__(*args, **kwargs)
            self._bytes = kwargs.get("unit") == "B"
            if self._bytes and self.total:
                with progress.lock:
                    progress.total_bytes += int(self.total)

        def update(self, n=1):
            if self._bytes and n:
                with progress.lock:
                    progress.done_bytes += int(n)
            return super().update(n)

    return Reporting


def _is_network_error(error: BaseException) -> bool:
    """True when the hub could not be reached at all (no network, DNS, refused)."""
    import httpx

    seen = error
    while seen is not None:
        if isinstance(seen, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def download(repo_id: str, models_dir: Path, progress: DownloadProgress) -> None:
    """Download a hub repository into the models folder (run this in a thread)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo_id = repo_id.strip()
    try:
        if not repo_id or repo_id.count("/") != 1 or ".." in repo_id:
            raise ItamaeError(
                f"{repo_id!r} is not a hub repository id.",
                "Use the form owner/name, e.g. Qwen/Qwen3-30B-A3B.",
            )
        dest = models_dir / local_name(repo_id)
        snapshot_download(
            repo_id,
            local_dir=dest,
            allow_patterns=DOWNLOAD_PATTERNS,
            tqdm_class=_progress_tqdm(progress),
            etag_timeout=10,
        )
        progress.path = dest
    except (RepositoryNotFoundError, GatedRepoError) as e:
        progress.error = f"not-found: {type(e).__name__}"
    except ItamaeError as e:
        progress.error = str(e)
    except Exception as e:  # the thread must report, not die silently
        offline = isinstance(e, (LocalEntryNotFoundError, OSError)) or _is_network_error(e)
        progress.error = "offline" if offline else f"{type(e).__name__}: {e}"
    finally:
        progress.finished = True
