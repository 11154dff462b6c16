"""Finding the models in each place, by content, without reading more than headers' first bytes.

A folder holding config.json is one model (a Hugging Face checkpoint, or Itamae's torch
format); a file is a GGUF when it starts with the GGUF magic (converters.formats.detect), so
Ollama's suffix-less blobs count and a mis-named file does not. The shards of a split GGUF
(llama.cpp's `NAME-00001-of-00003.gguf`, gguf-split) are one model, found at its first
shard, the one llama.cpp loads. A multimodal projector (llama.cpp's `mmproj-*.gguf`, Ollama's
`application/vnd.ollama.image.projector` layer) is listed as one, not offered for chat.

Each finder returns `Found` records with the name the place itself gives the model:
the path under Itamae's models folder, `org/repo` (and `/file.gguf`) in the Hugging Face
cache, `publisher/repo/file.gguf` in LM Studio (its own model path), `model:tag` for Ollama
(its short form: the default registry and the `library` namespace left out, as `ollama list`
prints them). Nothing here writes anywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from converters.formats.detect import is_gguf_file, source_format
from converters.formats.gguf_header import SHARD_NAME

MAX_DEPTH = (
    4  # a repo with quants in subfolders (unsloth's Q4_K_M/...) is 2 deep; more is not a model
)
MAX_MANIFEST_BYTES = 1 << 20  # Ollama manifests are a few hundred bytes
OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"


@dataclass
class Found:
    name: str  # the name the place gives it (made unique across places by names.py)
    source: str  # itamae | hf-cache | lmstudio | ollama | added
    path: Path  # what the engine loads: a model folder, a GGUF file, its first shard
    format: str  # gguf | hf | torch
    kind: str = "model"  # model | projector
    files: list[Path] = field(default_factory=list)  # every file of a GGUF model (shards)
    display_name: str = ""
    projector: Path | None = None  # an Ollama model's vision projector layer


def _is_projector(path: Path) -> bool:
    return "mmproj" in path.name.lower()


def _gguf_models(files: list[Path]) -> list[tuple[Path, list[Path]]]:
    """GGUF files -> (first shard or file, all its files); shards of one set grouped."""
    singles, sets = [], {}
    for path in files:
        match = SHARD_NAME.match(path.name)
        if match:
            sets.setdefault((path.parent, match["prefix"], match["count"]), []).append(path)
        else:
            singles.append((path, [path]))
    for shards in sets.values():
        shards.sort()
        singles.append((shards[0], shards))
    return sorted(singles)


def models_in_tree(root: Path, max_depth: int = MAX_DEPTH) -> list[tuple[Path, str, list[Path]]]:
    """(path, format, files) of every model under `root`: folders with config.json (not
    descended into further) and GGUF files; hidden entries (downloads in progress) skipped."""
    found: list[tuple[Path, str, list[Path]]] = []
    fmt = source_format(root) if root.is_dir() else "unknown"
    if fmt in ("hf", "torch"):
        return [(root, fmt, [])]
    ggufs: list[Path] = []
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    for child in children:
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if max_depth > 0:
                found += models_in_tree(child, max_depth - 1)
        elif child.is_file() and is_gguf_file(child):
            ggufs.append(child)
    found += [(first, "gguf", files) for first, files in _gguf_models(ggufs)]
    return found


def _found(name: str, source: str, path: Path, fmt: str, files: list[Path]) -> Found:
    kind = "projector" if fmt == "gguf" and _is_projector(path) else "model"
    return Found(name, source, path, fmt, kind, files or ([path] if fmt == "gguf" else []))


def in_folder(folder: Path, source: str, prefix: str = "") -> list[Found]:
    """Models under a plain folder (Itamae's models folder, LM Studio's), named by their
    path relative to it."""
    if not folder.is_dir():
        return []
    out = []
    for path, fmt, files in models_in_tree(folder):
        if path == folder:
            continue  # the folder itself is not a model of itself
        out.append(_found(prefix + path.relative_to(folder).as_posix(), source, path, fmt, files))
    return out


def demo_models(demo_dir: Path) -> list[Found]:
    """The bundled demo: its checkpoint is `demo`, other files `demo/<file>`."""
    out = []
    for found in in_folder(demo_dir, "itamae", prefix="demo/"):
        if found.format in ("hf", "torch") and found.path.name == "hf":
            found.name, found.display_name = "demo", "Itamae demo"
        out.append(found)
    return out


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot `refs/main` points at, else the newest one (huggingface_hub's layout:
    models--org--name/refs/<branch> holds a commit, snapshots/<commit>/ the files)."""
    try:
        commit = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        commit = ""
    if commit and (repo_dir / "snapshots" / commit).is_dir():
        return repo_dir / "snapshots" / commit
    snapshots = [p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()]
    return max(snapshots, key=lambda p: p.stat().st_mtime, default=None)


def hf_cache_models(cache: Path) -> list[Found]:
    out = []
    for repo_dir in sorted(cache.glob("models--*")):
        # the hub forbids "--" inside names, so the folder name splits back unambiguously
        repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
        snapshot = _snapshot(repo_dir)
        if snapshot is None:
            continue
        for path, fmt, files in models_in_tree(snapshot):
            relative = path.relative_to(snapshot).as_posix()
            name = repo_id if relative == "." else f"{repo_id}/{relative}"
            out.append(_found(name, "hf-cache", path, fmt, files))
    return out


def lmstudio_models(models_dir: Path) -> list[Found]:
    """LM Studio keeps `<publisher>/<repo>/<file>.gguf` (and MLX folders) two levels down;
    its own model path is the name."""
    return in_folder(models_dir, "lmstudio")


def ollama_name(host: str, namespace: str, model: str, tag: str) -> str:
    if host != OLLAMA_REGISTRY:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace != "library":
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def _blob(store: Path, digest: str) -> Path | None:
    algorithm, _, hex_digest = str(digest).partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
        return None  # not a digest Ollama writes: never turned into a path
    blob = store / "blobs" / f"sha256-{hex_digest}"
    return blob if blob.is_file() else None


def _read_manifest(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            data = json.loads(f.read(MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ollama_models(store: Path) -> list[Found]:
    """manifests/<host>/<namespace>/<model>/<tag> are JSON naming blobs/sha256-<hex>
    layers; the `application/vnd.ollama.image.model` layer is the GGUF."""
    out = []
    manifests = store / "manifests"
    for tag_file in sorted(manifests.glob("*/*/*/*")):
        if not tag_file.is_file():
            continue
        host, namespace, model, tag = tag_file.relative_to(manifests).parts
        layers = _read_manifest(tag_file).get("layers")
        layers = [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []
        blobs = {x.get("mediaType"): _blob(store, x.get("digest", "")) for x in layers}
        weights = blobs.get(OLLAMA_MODEL)
        if weights is None or not is_gguf_file(weights):
            continue
        found = Found(ollama_name(host, namespace, model, tag), "ollama", weights, "gguf")
        found.files, found.projector = [weights], blobs.get(OLLAMA_PROJECTOR)
        out.append(found)
    return out


def added_models(paths: list[str]) -> list[Found]:
    """Paths the person added: a model folder or GGUF, or a folder of them."""
    out = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_file() and is_gguf_file(path):
            out.append(_found(path.name, "added", path, "gguf", [path]))
        elif path.is_dir():
            for model, fmt, files in models_in_tree(path):
                out.append(_found(model.name, "added", model, fmt, files))
    return out
