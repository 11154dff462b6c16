"""The models on this machine, wherever they are, each under one name; and getting new ones.

Places (read only, except Itamae's own models folder): the bundled demo and Itamae's
models folder, the Hugging Face cache, LM Studio's models folder, Ollama's store, and
paths the person added (sources.py says where each is, scan.py what is in it, names.py
how each model is named). What each model is comes from converters.facts.inspection
(headers only, so a scan is fast). Downloads go into the shared Hugging Face cache
(downloads.py); the hub is searched only on request (hub_search.py).

Only files the person can get back are deleted: things inside Itamae's models folder or
the Hugging Face cache. A model in another tool's folder or an added path is only
forgotten, never removed from disk, and the demo ships with the program.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from app.settings import AppPaths, SettingsFile
from converters.core.errors import ItamaeError
from converters.core.model_info import ModelInfo
from converters.facts.inspection import inspect
from engine.loader import DEMO_DIR
from engine.loader import load as engine_load
from engine.types import Backend

from . import scan as places
from .downloads import pull_reporting
from .names import passes_through, pick, unique_names
from .progress import DownloadProgress, human_bytes
from .sources import Machine

SOURCES = ("itamae", "hf-cache", "lmstudio", "ollama", "added")
DELETABLE = ("itamae", "hf-cache")

__all__ = [
    "DownloadProgress",
    "entry",
    "LibraryEntry",
    "Machine",
    "delete",
    "download",
    "find",
    "human_bytes",
    "inspect_model",
    "is_model",
    "load",
    "model_source",
    "passes_through",
    "resolve",
    "scan",
    "size_on_disk",
]


@dataclass
class LibraryEntry:
    path: Path
    source: str  # one of SOURCES
    name: str  # unique: what --model, the API and the UI call it
    info: ModelInfo | None = None
    problem: str = ""  # why inspect could not read it
    format: str = ""  # gguf | hf | torch
    kind: str = "model"  # model | projector (a vision encoder, not a chat model)
    display_name: str = ""
    files: list[Path] = field(default_factory=list)
    projector: Path | None = None

    @property
    def key(self) -> str:
        return str(self.path)

    @property
    def bundled(self) -> bool:
        return DEMO_DIR.resolve() in (self.path.resolve(), *self.path.resolve().parents)

    def to_json(self) -> dict:
        info = self.info
        return {
            "name": self.name,
            "display_name": self.display_name or (info.name if info else "") or self.name,
            "source": self.source,
            "kind": self.kind,
            "format": self.format or (info.format if info else ""),
            "architecture": info.arch if info else "",
            "experts": info.n_experts if info else 0,
            "experts_per_token": info.experts_per_token if info else 0,
            "size_bytes": size_on_disk(self.path, self.files),
            "quantization": info.quant if info else "",
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "projector": str(self.projector) if self.projector else None,
            "problem": self.problem,
        }


def find(
    models_dir: Path,
    added_paths: list[str],
    loaded: str | None = None,
    machine: Machine | None = None,
) -> list[places.Found]:
    """Every model on this machine with its unique name, nothing inspected (fast)."""
    machine = machine or Machine.current()
    found = places.demo_models(DEMO_DIR) + places.in_folder(models_dir, "itamae")
    found += places.hf_cache_models(machine.hf_cache)
    for folder in machine.lmstudio_model_dirs():
        found += places.lmstudio_models(folder)
    for store in machine.ollama_stores():
        found += places.ollama_models(store)
    extra = [loaded] if loaded and loaded != "demo" and Path(loaded).exists() else []
    found += places.added_models(list(added_paths) + extra)
    return unique_names(found)


def inspect_model(path: Path) -> tuple[ModelInfo | None, str]:
    """What converters.facts.inspection says, or why it could not say (the list shows the
    reason instead of failing as a whole)."""
    try:
        return inspect(path), ""
    except ItamaeError as e:
        return None, str(e)
    except Exception as e:  # a model file nobody anticipated must not break the list
        return None, f"{type(e).__name__}: {e}"


def entry(found: places.Found) -> LibraryEntry:
    info, problem = inspect_model(found.path)
    return LibraryEntry(
        found.path,
        found.source,
        found.name,
        info,
        problem,
        format=found.format,
        kind=found.kind,
        display_name=found.display_name,
        files=found.files,
        projector=found.projector,
    )


def scan(
    models_dir: Path,
    added_paths: list[str],
    loaded: str | None = None,
    machine: Machine | None = None,
) -> list[LibraryEntry]:
    """Every model on this machine, each once, with what inspect says about it; `loaded`
    (the model in use, which may have come from `--model` anywhere on disk) is listed too."""
    return [entry(f) for f in find(models_dir, added_paths, loaded, machine)]


def resolve(text: str, models_dir: Path, added_paths: list[str], machine=None) -> places.Found:
    return pick(find(models_dir, added_paths, machine=machine), text)


def model_source(text: str, machine: Machine | None = None) -> str | Path:
    """What `--model TEXT` means to engine.load: paths, URLs and `demo` pass through as
    typed (engine.detect reads their format from their content); a library name becomes
    its path."""
    if passes_through(text):
        return text
    settings = SettingsFile(AppPaths.default())
    return resolve(text, settings.models_dir(), settings.load().added_paths, machine).path


def load(source: str | Path, engine: str = "auto", **options) -> Backend:
    """engine.load that also takes library names: what the commands and ModelManager call."""
    return engine_load(model_source(str(source)), engine=engine, **options)


def size_on_disk(path: Path, files: list[Path] | None = None) -> int:
    """Bytes of a model: its files (a GGUF's shards), else everything in its folder."""
    if files:
        return sum(f.stat().st_size for f in files if f.exists())
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def delete(entry: LibraryEntry, models_dir: Path) -> str:
    """Remove a model; returns what was done ("deleted" | "forgotten")."""
    if entry.bundled:
        raise ItamaeError("The demo model ships with Itamae and cannot be deleted.", "")
    if entry.source in ("lmstudio", "ollama"):
        tool = "LM Studio" if entry.source == "lmstudio" else "Ollama"
        raise ItamaeError(
            f"{entry.name} is {tool}'s; Itamae reads {tool}'s folder but never changes it.",
            f"Remove it in {tool} ({'its My Models page' if tool == 'LM Studio' else '`ollama rm`'}).",
        )
    if entry.source not in DELETABLE:
        return "forgotten"  # the person's own files: only dropped from the list
    if entry.source == "itamae":
        target = entry.path.resolve()
        root = models_dir.resolve()
        if root not in target.parents:
            raise ItamaeError(f"{target} is not inside the models folder {root}.", "")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            for shard in entry.files or [target]:
                shard.unlink()
        return "deleted"
    return _delete_from_hf_cache(entry)


def _delete_from_hf_cache(entry: LibraryEntry) -> str:
    """A folder model: its revision, through huggingface_hub's own cache tools. A GGUF
    (one quant of a repository that may hold several): its files and their blobs only."""
    storage = next(p for p in entry.path.parents if p.name.startswith("models--"))
    if entry.path.is_dir():
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir(cache_dir=storage.parent)
        snapshot = entry.path.resolve()
        hashes = [
            rev.commit_hash
            for repo in cache.repos
            for rev in repo.revisions
            if Path(rev.snapshot_path).resolve() in (snapshot, *snapshot.parents)
        ]
        cache.delete_revisions(*hashes).execute()
        return "deleted"
    for pointer in entry.files or [entry.path]:
        blob = pointer.resolve()
        pointer.unlink()
        still_used = any(
            p.resolve() == blob for p in (storage / "snapshots").rglob("*") if p.is_symlink()
        )
        if storage / "blobs" in blob.parents and not still_used:
            blob.unlink()
    return "deleted"


def download(spec: str, progress: DownloadProgress) -> None:
    """The Models tab's download of `org/name[:QUANT]` into the Hugging Face cache, in a
    thread: `progress` says how far it is and what went wrong."""
    pull_reporting(spec, progress)


def is_model(path: Path) -> bool:
    """A model folder or GGUF (by content), or a folder holding some: what Add accepts."""
    return bool(places.added_models([str(path)]))
