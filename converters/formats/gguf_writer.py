"""Write a GGUF file from a Hugging Face checkpoint, streaming tensor by tensor.

The header, metadata and tensor index go through the gguf package's `GGUFWriter`
(gguf-py, the same writer llama.cpp's converter uses; long arrays packed in bulk, see
BulkArrayWriter); tensor data is then appended piece by piece (one source tensor, one
expert of a stacked expert tensor, or a few MB of rows, at a time: gguf_pieces) with the
writer's own alignment, the next pieces read and encoded on threads while one is written,
so memory stays bounded by a few pieces whatever the model's size. Layout: GGUF v3
(llama.cpp docs/gguf.md).
"""

from __future__ import annotations

import json
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFEndian, GGUFValueType, Keys

from converters.archs.spec import ArchSpec
from converters.core.errors import Cancelled
from converters.facts.card_metadata import CardFacts, hub_url, read_card
from converters.facts.model_card import OPENNESS_KEY
from converters.facts.openness import openness_json
from converters.facts.sampling_defaults import SAMPLING_KEYS
from converters.formats.gguf_pieces import piece_reads
from converters.formats.gguf_plan import PlannedTensor
from converters.formats.gguf_quant import encode, nbytes, one_torch_thread_per_worker
from converters.formats.gguf_tokenizer import add_tokenizer
from converters.formats.hf_reader import HFCheckpoint

Progress = Callable[[float, str], None]  # (fraction done 0..1, what is happening)
RECIPE_KEY = "itamae.quant_recipe"  # which Itamae recipe made the file (inspect shows it)


class BulkArrayWriter(gguf.GGUFWriter):
    """gguf-py's GGUFWriter, packing long metadata arrays in bulk.

    Why: gguf-py packs an array item by item (a type check, a recursive `_pack_val` and a
    bytearray append each), which took 2.5 s of a gpt-oss conversion for the 150k-token
    vocabulary's tokens, token types and merges (cProfile, bench_convert --model gpt-oss).
    Here a list of one exact type (str, int, float or bool, the types `GGUFValueType.get_type`
    maps to STRING, INT32, FLOAT32 and BOOL) is packed with one join or one numpy cast, to
    the same bytes; anything else (a sub-type given, subclasses, mixed types, values that do
    not fit, big-endian files) goes through gguf-py's own packing, errors included. Tests
    compare both writers' files byte for byte."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None) -> bytes:
        if vtype == GGUFValueType.ARRAY and sub_type is None:
            packed = _bulk_array(val) if self.endianess == GGUFEndian.LITTLE else None
            if packed is not None:
                return (struct.pack("<I", vtype) if add_vtype else b"") + packed
        return super()._pack_val(val, vtype, add_vtype, sub_type)


_LENGTH = struct.Struct("<Q")


def _bulk_array(val: object) -> bytes | None:
    """A GGUF array's bytes (item type, count, items) as gguf-py writes them, or None
    where gguf-py's own packing must decide (see BulkArrayWriter)."""
    if not isinstance(val, list) or len(val) < 2:
        return None
    kinds = set(map(type, val))
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is str:
        items = b"".join([_LENGTH.pack(len(e)) + e for e in (s.encode("utf-8") for s in val)])
        ltype = GGUFValueType.STRING
    elif kind is int:
        if not -(2**31) <= min(val) <= max(val) < 2**31:
            return None  # struct.pack's own error
        items, ltype = np.array(val, dtype="<i4").tobytes(), GGUFValueType.INT32
    elif kind is float:
        wide = np.array(val, dtype=np.float64)
        with np.errstate(over="ignore"):
            narrow = wide.astype("<f4")  # round to nearest even, as struct.pack("<f") does
        if np.any(np.isinf(narrow) & np.isfinite(wide)):
            return None  # a finite value too large for float32: struct.pack's OverflowError
        items, ltype = narrow.tobytes(), GGUFValueType.FLOAT32
    elif kind is bool:
        items, ltype = np.array(val, dtype=np.bool_).tobytes(), GGUFValueType.BOOL
    else:
        return None
    return struct.pack("<IQ", ltype, len(val)) + items


def add_card_metadata(writer: gguf.GGUFWriter, card: CardFacts, fallback_name: str) -> None:
    """Model-card facts -> general.* keys (names as gguf-py's Keys.General spells them)."""
    g = Keys.General
    writer.add_string(g.NAME, card.name or fallback_name)
    for key, value in (
        (g.LICENSE, card.license),
        (g.LICENSE_NAME, card.license_name),
        (g.LICENSE_LINK, card.license_link),
        (g.SOURCE_URL, card.source_url),
    ):
        if value:
            writer.add_string(key, value)
    if card.base_models:
        writer.add_uint32(g.BASE_MODEL_COUNT, len(card.base_models))
        for i, base in enumerate(card.base_models):
            writer.add_string(g.BASE_MODEL_NAME.format(id=i), base.rsplit("/", 1)[-1])
            writer.add_string(g.BASE_MODEL_REPO_URL.format(id=i), hub_url(base))
    if card.datasets:
        writer.add_uint32(g.DATASET_COUNT, len(card.datasets))
        for i, data in enumerate(card.datasets):
            writer.add_string(g.DATASET_NAME.format(id=i), data.rsplit("/", 1)[-1])
            writer.add_string(g.DATASET_REPO_URL.format(id=i), hub_url(data))
    if card.tags:
        writer.add_array(g.TAGS, card.tags)
    if card.languages:
        writer.add_array(g.LANGUAGES, card.languages)


def add_sampling_defaults(writer: gguf.GGUFWriter, folder: Path) -> None:
    """generation_config.json's sampling fields as general.sampling.* (SAMPLING_KEYS);
    llama.cpp uses them as the model's default sampling settings."""
    path = folder / "generation_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        config = {}  # a broken generation config only loses the defaults
    for field, key in SAMPLING_KEYS.items():
        value = config.get(field) if isinstance(config, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if field == "top_k":
            writer.add_int32(key, int(value))
        else:
            writer.add_float32(key, float(value))


def add_value(writer: gguf.GGUFWriter, key: str, value: object) -> None:
    """Metadata values from the arch tables: ints are uint32 and floats float32, the types
    llama.cpp's loader reads them as."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_key_value(key, value, GGUFValueType.UINT32)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, list):  # e.g. a per-layer flag (attention.recurrent_layers)
        writer.add_array(key, value)
    else:
        writer.add_string(key, str(value))


def build_writer(
    ckpt: HFCheckpoint,
    spec: ArchSpec,
    planned: list[PlannedTensor],
    file_type: int,
    recipe_name: str,
    repo_id: str = "",
) -> gguf.GGUFWriter:
    writer = BulkArrayWriter(None, spec.arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    add_card_metadata(writer, read_card(ckpt.folder, repo_id), ckpt.folder.name)
    # The whole openness card, with its sources, so a converted file still says what its
    # publishers opened (general.* alone has no room for training data or code facts).
    writer.add_string(OPENNESS_KEY, openness_json(ckpt.folder, repo_id))
    for key, value in spec.metadata(ckpt.config):
        add_value(writer, key, value)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(RECIPE_KEY, recipe_name)
    add_tokenizer(
        writer,
        ckpt.folder,
        int(ckpt.config["vocab_size"]),
        spec.special_tokens,
        spec.tokenizer_model,
        spec.visible_tokens,
        spec.chat_template,
    )
    add_sampling_defaults(writer, ckpt.folder)
    for p in planned:
        writer.add_tensor_info(
            p.name, p.shape, np.dtype(np.float32), nbytes(p.shape, p.qtype), raw_dtype=p.qtype
        )
    total, shared, expert, n_experts = writer.get_total_parameter_count()
    writer.add_size_label(gguf.size_label(total, shared, expert, n_experts))
    return writer


def data_bytes(planned: list[PlannedTensor]) -> int:
    return sum(nbytes(p.shape, p.qtype) for p in planned)


def write_gguf(
    ckpt: HFCheckpoint,
    writer: gguf.GGUFWriter,
    planned: list[PlannedTensor],
    path: Path,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Write header, metadata, tensor index, then the data piece by piece into `path`."""
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    writer.write_padding(fout, fout.tell())
    total, done = max(1, data_bytes(planned)), 0
    with one_torch_thread_per_worker(), BackgroundWrites(fout) as out, PiecesAhead() as ahead:
        for p in planned:
            jobs = [partial(_encoded, read, p.qtype) for read in piece_reads(ckpt, p)]
            for encoded in ahead.results(jobs):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Conversion cancelled.", "Nothing was written.")
                out.write(encoded)
                done += encoded.size
                if progress is not None:
                    progress(done / total, p.name)
            out.write(padding(nbytes(p.shape, p.qtype), writer.data_alignment))
    writer.close()


def _encoded(read: Callable[[], torch.Tensor], qtype: GGMLQuantizationType) -> np.ndarray:
    return encode(read(), qtype)


class PiecesAhead:
    """Reads and encodes the next pieces of a tensor on threads while the writer takes the
    current one, results in order. At most AHEAD pieces of the same tensor are in progress
    beyond the one being written (pieces are one expert, one source or a few MB of rows:
    gguf_pieces.piece_reads), so memory stays a few pieces. The safetensors read and the
    MXFP4 repack or Q8_0 encoding of one piece run beside those of the next and beside
    the write of the last (numpy, torch and file writes release the GIL)."""

    AHEAD = 2

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=self.AHEAD, thread_name_prefix="gguf-read")

    def results(self, jobs: list[Callable[[], np.ndarray]]) -> Iterator[np.ndarray]:
        pending: deque[Future] = deque()
        try:
            for job in jobs:
                pending.append(self._pool.submit(job))
                if len(pending) > self.AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # cancelled or failed: drop what has not started, wait for the rest
            for future in pending:
                future.cancel()
            wait(pending)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=True)
        return False


def padding(n: int, alignment: int) -> np.ndarray:
    return np.zeros(-n % alignment, dtype=np.uint8)


class BackgroundWrites:
    """Writes encoded pieces on a thread while the next piece is read and encoded (file
    writes release the GIL). Only pieces up to OVERLAP_BYTES are handed over, one at a
    time, so at most one small piece is held beyond what the synchronous loop holds: a
    large tensor (an embedding) is written in place after the queue drains, and peak
    memory does not grow."""

    OVERLAP_BYTES = 64 << 20

    def __init__(self, fout):
        self._fout = fout
        self._pending: Future | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gguf-write")

    def write(self, data: np.ndarray) -> None:
        self._wait()
        if data.size > self.OVERLAP_BYTES:
            self._fout.write(data.data)
        elif data.size:
            self._pending = self._pool.submit(self._fout.write, data.data)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failed write (disk full) here

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
        return False


def assign_types(
    planned: list[PlannedTensor], choose: Callable[[PlannedTensor], GGMLQuantizationType]
) -> None:
    for p in planned:
        p.qtype = choose(p)
