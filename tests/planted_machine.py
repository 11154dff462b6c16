"""A home folder planted with the model stores of other tools, holding real model files.

    machine = plant_machine(tmp_path / "home")

- the Hugging Face cache as huggingface_hub lays it out (blobs named by checksum,
  snapshots of relative links, refs/main): the demo checkpoint, and a GGUF repository;
- LM Studio's `~/.lmstudio/models/<publisher>/<repo>/` with a GGUF, a projector and one
  name that collides with the HF cache's, and a second models folder named by its
  settings.json (`downloadsFolder`) holding a split GGUF written by gguf-py's own
  splitting writer (`split_max_tensors`, llama.cpp's NAME-00001-of-00002.gguf);
- Ollama's `~/.ollama/models`: manifests naming sha256 blobs (model, projector, template
  layers), in the `library` namespace and in a user's;
- Itamae's data folder with settings.json naming its models folder and an added path.

`snapshot(home)` records every path's content hash, size and mtime, so a test can show
that nothing in those folders changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf

from engine.loader import DEMO_DIR

DEMO_GGUF = DEMO_DIR / "itamae-demo-Q8_0.gguf"
DEMO_HF = DEMO_DIR / "hf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class PlantedMachine:
    home: Path
    hf_cache: Path
    data_dir: Path  # ITAMAE_HOME
    models_dir: Path
    added: Path
    env: dict

    def subprocess_env(self) -> dict:
        env = {**os.environ, **self.env}
        env.pop("OLLAMA_MODELS", None)
        return env


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _plant_hf_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    for name, source in files.items():
        blob = storage / "blobs" / sha256_file(source)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(source, blob)
        pointer = snapshot / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return snapshot


def split_gguf(source: Path, dest: Path, shards: int = 2) -> list[Path]:
    """`source` rewritten as `shards` files by gguf-py's GGUFWriter (the way
    convert_hf_to_gguf.py --split-max-tensors does), metadata copied the way gguf-py's
    gguf_new_metadata.py copies it."""
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    per_shard = -(-len(reader.tensors) // shards)
    writer = gguf.GGUFWriter(dest, arch, split_max_tensors=per_shard)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(
            tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return writer.format_shard_names(dest)


def _ollama_blob(store: Path, data: bytes | Path) -> str:
    raw = data.read_bytes() if isinstance(data, Path) else data
    digest = hashlib.sha256(raw).hexdigest()
    blob = store / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(raw)
    return f"sha256:{digest}"


def _plant_ollama(store: Path, namespace: str, model: str, tag: str, projector: bool) -> None:
    layers = [
        {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": _ollama_blob(store, DEMO_GGUF),
            "size": DEMO_GGUF.stat().st_size,
        },
        {
            "mediaType": "application/vnd.ollama.image.template",
            "digest": _ollama_blob(store, b"{{ .Prompt }}"),
            "size": 13,
        },
    ]
    if projector:
        layers.append(
            {
                "mediaType": "application/vnd.ollama.image.projector",
                "digest": _ollama_blob(store, DEMO_GGUF.read_bytes()[:4096]),
                "size": 4096,
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json"},
        "layers": layers,
    }
    path = store / "manifests" / "registry.ollama.ai" / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


def plant_machine(home: Path) -> PlantedMachine:
    hf_cache = home / ".cache" / "huggingface" / "hub"
    _plant_hf_repo(hf_cache, "itamae/demo", {p.name: p for p in DEMO_HF.iterdir()})
    _plant_hf_repo(hf_cache, "itamae/demo-GGUF", {"itamae-demo-Q8_0.gguf": DEMO_GGUF})

    lm = home / ".lmstudio" / "models"
    (lm / "lmstudio-community" / "Itamae-Demo-GGUF").mkdir(parents=True)
    shutil.copyfile(DEMO_GGUF, lm / "lmstudio-community/Itamae-Demo-GGUF/itamae-demo-Q8_0.gguf")
    shutil.copyfile(DEMO_GGUF, lm / "lmstudio-community/Itamae-Demo-GGUF/mmproj-demo-F16.gguf")
    (lm / "itamae" / "demo-GGUF").mkdir(parents=True)  # the same name as in the HF cache
    shutil.copyfile(DEMO_GGUF, lm / "itamae/demo-GGUF/itamae-demo-Q8_0.gguf")
    moved = home / "big-disk" / "lm-models"
    (moved / "someone" / "Demo-Split-GGUF").mkdir(parents=True)
    split_gguf(DEMO_GGUF, moved / "someone/Demo-Split-GGUF/demo-split.gguf", shards=2)
    (home / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(moved)}))

    store = home / ".ollama" / "models"
    _plant_ollama(store, "library", "itamae-demo", "q8_0", projector=True)
    _plant_ollama(store, "someone", "tiny", "latest", projector=False)

    data_dir = home / "itamae-data"
    models_dir = home / "itamae-models"
    shutil.copytree(DEMO_HF, models_dir / "my-demo-copy")
    added = home / "elsewhere" / "added-demo.gguf"
    added.parent.mkdir(parents=True)
    shutil.copyfile(DEMO_GGUF, added)
    data_dir.mkdir()
    settings = {"models_dir": str(models_dir), "added_paths": [str(added)]}
    (data_dir / "settings.json").write_text(json.dumps(settings))
    env = {"HOME": str(home), "ITAMAE_HOME": str(data_dir), "HF_HUB_CACHE": str(hf_cache)}
    return PlantedMachine(home, hf_cache, data_dir, models_dir, added, env)


def snapshot(root: Path) -> dict[str, tuple]:
    """path -> (kind, size, mtime_ns, sha256 or link target) for everything under `root`."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                state[str(path)] = ("link", st.st_mtime_ns, os.readlink(path))
            elif path.is_dir():
                state[str(path)] = ("dir", st.st_mtime_ns)
            else:
                state[str(path)] = ("file", st.st_size, st.st_mtime_ns, sha256_file(path))
    return state
