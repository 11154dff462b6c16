"""What format a model file or folder is in, by content rather than by name.

A GGUF file starts with the magic bytes `GGUF` (Ollama's blobs carry no `.gguf` suffix,
so a name says nothing); a safetensors file starts with an 8-byte little-endian header
length followed by a JSON object; a folder is Itamae's torch format when it holds the
manifest, a Hugging Face checkpoint when it holds config.json. This is the one place
that decides it: the loader, inspect, scoring, the library and the UI all ask here.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Literal

from converters.formats.gguf_header import GGUF_MAGIC
from converters.formats.torch_format import MANIFEST

SourceFormat = Literal["gguf", "safetensors", "torch", "hf", "unknown"]
# a safetensors header longer than this is not one (safetensors itself caps it at 100 MB)
MAX_SAFETENSORS_HEADER = 100_000_000


def is_gguf_file(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():  # a FIFO or device in a scanned folder would block the read
        return False
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


def is_safetensors_file(path: str | Path) -> bool:
    if not Path(path).is_file():
        return False
    try:
        with Path(path).open("rb") as f:
            head = f.read(9)
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= MAX_SAFETENSORS_HEADER and head[8:9] == b"{"


def source_format(path: str | Path) -> SourceFormat:
    """ "gguf" | "safetensors" (a lone file) | "torch" | "hf" (folders) | "unknown"."""
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return "torch"
        if (path / "config.json").is_file():
            return "hf"
        return "unknown"
    if is_gguf_file(path):
        return "gguf"
    if is_safetensors_file(path):
        return "safetensors"
    return "unknown"
