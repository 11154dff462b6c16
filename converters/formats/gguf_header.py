"""A GGUF header reader that skips vocabularies: metadata and the tensor table, fast.

The format is gguf-py's (gguf/gguf_reader.py, docs/gguf.md in ggml-org/ggml): magic,
version, tensor and key/value counts, the key/values, the tensor infos (name, dims in
ggml order, type, offset), then aligned tensor data. Types and block sizes come from the
gguf package's own constants.

Why not gguf.GGUFReader here: it turns every vocabulary entry into numpy views, which
takes 5-70 s for a 128k-256k vocabulary on a busy laptop-class CPU, at every model load.
This reader walks string arrays by their length prefixes without keeping them (~0.1 s),
and checks every count and size against the file before trusting it, so a hostile or
truncated header ends in BadModelFile instead of a huge allocation. The tests check it
against GGUFReader on real files.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from converters.core.errors import BadModelFile

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
KEEP_ARRAY_ITEMS = 4096  # longer arrays (vocabularies, merges, scores) are skipped
_U64 = struct.Struct("<Q")

_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (the contiguous one) first
    type: GGMLQuantizationType
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int


@dataclass
class GGUFContents:
    version: int
    metadata: dict  # key -> value; arrays longer than KEEP_ARRAY_ITEMS left out
    array_lengths: dict  # key -> number of items, for every array (kept or not)
    tensors: list[TensorEntry]
    data_offset: int


class _Cursor:
    def __init__(self, data, name: str):
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> BadModelFile:
        return BadModelFile(
            f"{self.name} is not a valid GGUF file: {what} (at byte {self.pos}).",
            "Check that the download finished, or convert the model again.",
        )

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail("it ends in the middle of its header")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def advance(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail("it ends in the middle of its header")
        self.pos += n

    def skip_strings(self, count: int) -> None:
        """Walk `count` length-prefixed strings without reading them (vocabularies)."""
        data, pos, length_at = self.data, self.pos, _U64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + length_at(data, pos)[0]
        except struct.error as e:
            raise self.fail("a string array runs past the end of the file") from e
        self.advance(pos - self.pos)

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail("a string is not UTF-8") from e

    def skip_string(self) -> None:
        self.advance(self.scalar("<Q"))

    def value_type(self) -> GGUFValueType:
        code = self.scalar("<I")
        try:
            return GGUFValueType(code)
        except ValueError as e:
            raise self.fail(f"unknown value type {code}") from e

    def value(self, kind: GGUFValueType, keep: bool = True):
        if kind == GGUFValueType.STRING:
            return self.string() if keep else self.skip_string()
        if kind == GGUFValueType.ARRAY:
            return self.array(keep)[0]
        return self.scalar(_SCALARS[kind])

    def array(self, keep: bool) -> tuple[list | None, int]:
        kind, count = self.value_type(), self.scalar("<Q")
        item_size = struct.calcsize(_SCALARS[kind]) if kind in _SCALARS else 8
        if count * item_size > len(self.data) - self.pos:  # every item needs >= item_size
            raise self.fail(f"an array claims {count} items, more than the file holds")
        keep = keep and count <= KEEP_ARRAY_ITEMS
        if kind in _SCALARS and not keep:
            self.advance(count * item_size)
            return None, count
        if kind == GGUFValueType.STRING and not keep:
            self.skip_strings(count)
            return None, count
        items = [self.value(kind, keep) for _ in range(count)]
        return (items if keep else None), count


def read_contents(path: str | Path) -> GGUFContents:
    path = Path(path)
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(_Cursor(data, path.name), len(data))
    except ValueError as e:  # mmap of an empty file
        raise BadModelFile(f"{path.name} is empty.", "Convert or download it again.") from e
    except OSError as e:
        raise BadModelFile(f"Cannot read {path}: {e.strerror}.", "Check the path.") from e


def _parse(cur: _Cursor, file_size: int) -> GGUFContents:
    if cur.take(4) != GGUF_MAGIC:
        raise cur.fail("it does not start with the GGUF magic")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise cur.fail(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    if n_tensors > file_size or n_kv > file_size:
        raise cur.fail("its tensor or key counts are larger than the file")
    metadata, lengths = {}, {}
    for _ in range(n_kv):
        key, kind = cur.string(), cur.value_type()
        if kind == GGUFValueType.ARRAY:
            items, lengths[key] = cur.array(keep=True)
            if items is not None:
                metadata[key] = items
        else:
            metadata[key] = cur.value(kind)
    tensors = [_tensor_info(cur) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    for t in tensors:
        if data_offset + t.offset + t.n_bytes > file_size:
            raise BadModelFile(
                f"{cur.name} is truncated: tensor {t.name} ends past the end of the file.",
                "The download or conversion did not finish; fetch or convert it again.",
            )
    return GGUFContents(version, metadata, lengths, tensors, data_offset)


def _tensor_info(cur: _Cursor) -> TensorEntry:
    name, n_dims = cur.string(), cur.scalar("<I")
    if not 0 < n_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {name} has {n_dims} dimensions")
    shape = tuple(cur.scalar("<Q") for _ in range(n_dims))
    code = cur.scalar("<I")
    try:
        kind = GGMLQuantizationType(code)
        block, block_bytes = GGML_QUANT_SIZES[kind]
    except (ValueError, KeyError) as e:
        raise cur.fail(f"tensor {name} has unknown type {code}") from e
    offset = cur.scalar("<Q")
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    if shape[0] % block:
        raise cur.fail(f"tensor {name}: rows of {shape[0]} are not whole {kind.name} blocks")
    return TensorEntry(name, shape, kind, offset, n_elements, n_elements // block * block_bytes)


# llama.cpp's split files (llama_split_path, gguf-split): the first shard holds the metadata
SHARD_NAME = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass
class SplitContents:
    path: Path  # the first shard, the one llama.cpp loads
    files: list[Path]  # every shard, first first (one entry for an unsplit file)
    contents: GGUFContents  # the first shard's metadata, every shard's tensors


def shard_paths(path: Path, count: int) -> list[Path]:
    """All shards of a split GGUF, first (the one llama.cpp loads) first."""
    match = SHARD_NAME.match(path.name)
    if not match or int(match["count"]) != count:
        raise BadModelFile(
            f"{path.name} is one of {count} parts of a split GGUF, but its name does not say "
            "which (llama.cpp expects NAME-00001-of-0000N.gguf).",
            "Keep the shards' original names.",
        )
    shards = [
        path.with_name(f"{match['prefix']}-{i:05d}-of-{count:05d}.gguf")
        for i in range(1, count + 1)
    ]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise BadModelFile(
            f"The split model {shards[0].name} is missing {', '.join(missing)}.",
            "Download every part into the same folder.",
        )
    return shards


def read_split_contents(path: str | Path) -> SplitContents:
    """The header of a GGUF model; for a split model (any shard given), of all its shards."""
    path = Path(path)
    contents = read_contents(path)
    count = contents.metadata.get("split.count", 1)
    if not isinstance(count, int) or count <= 1:
        return SplitContents(path, [path], contents)
    shards = shard_paths(path, count)
    if path != shards[0]:
        contents = read_contents(shards[0])
    for shard in shards[1:]:
        contents.tensors.extend(read_contents(shard).tensors)
    return SplitContents(shards[0], shards, contents)
