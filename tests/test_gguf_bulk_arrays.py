"""The converter's bulk packing of metadata arrays (gguf_writer.BulkArrayWriter) writes the
same bytes as gguf-py's own GGUFWriter, item by item, and fails where gguf-py fails."""

from __future__ import annotations

import struct

import gguf
import pytest
from gguf import TokenType

from converters.formats.gguf_writer import BulkArrayWriter

TOKENS = ["<|endoftext|>", "Ġthe", "é", "日本語", "", "a b", "\u0100\u0120", "🙂", "x" * 300]


def metadata_bytes(writer_class, arrays: dict[str, list], tmp_path) -> bytes:
    path = tmp_path / f"{writer_class.__name__}.gguf"
    writer = writer_class(path, "llama")
    writer.add_string("general.name", "bulk")
    for key, value in arrays.items():
        writer.add_array(key, value)
    writer.add_uint32("after.arrays", 7)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path.read_bytes()


ARRAYS = {
    "tokens": TOKENS * 50,
    "types": [int(t) for t in (TokenType.NORMAL, TokenType.CONTROL, TokenType.UNUSED)] * 40
    + [-(2**31), 2**31 - 1],
    "scores": [0.0, -1.0, -0.0, 1e-45, 0.1, -12345.678, 3.4028235e38, float("inf"), 1 / 3] * 9,
    "flags": [True, False, False, True],
    "one": ["only"],  # single items stay with gguf-py
    "enums": [TokenType.NORMAL, TokenType.BYTE],  # int subclasses stay with gguf-py
    "nested": [[1, 2], [3]],
}


def test_bulk_arrays_write_gguf_py_bytes(tmp_path):
    ours = metadata_bytes(BulkArrayWriter, ARRAYS, tmp_path)
    theirs = metadata_bytes(gguf.GGUFWriter, ARRAYS, tmp_path)
    assert ours == theirs
    # and the arrays were read back as written
    reader = gguf.GGUFReader(tmp_path / "BulkArrayWriter.gguf")
    field = reader.fields["tokens"]
    assert [bytes(field.parts[i]).decode() for i in field.data] == ARRAYS["tokens"]


@pytest.mark.parametrize(
    "value",
    [
        [1, 2**31],  # past int32
        [1.0, 1e39],  # past float32
        [1, 2.0],  # mixed types
        ["a", b"b"],  # str and bytes: gguf-py packs both as strings
    ],
)
def test_values_gguf_py_refuses_or_mixes_go_through_gguf_py(value, tmp_path):
    def outcome(writer_class):
        try:
            return metadata_bytes(writer_class, {"odd": value}, tmp_path)
        except (ValueError, OverflowError, struct.error) as e:
            return type(e)

    assert outcome(BulkArrayWriter) == outcome(gguf.GGUFWriter)
