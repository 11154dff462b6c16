"""Hostile safetensors files: every malformed header or body ends in BadModelFile, never a crash.

Cases are generated with hypothesis from a valid file: the header length word, the JSON
header (dtype, shape, offsets, junk) and the body are mutated. Declared sizes far beyond
the file must be refused before anything that large is allocated.
"""

from __future__ import annotations

import json
import resource
import struct
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from converters.core.errors import BadModelFile, ItamaeError
from converters.formats.hf_reader import HFCheckpoint

CASES = 2000
DTYPES = ["F32", "F16", "BF16", "I8", "U8", "F8_E4M3", "I64", "BOOL", "Q4", "", "F32 ", None, 7]


def _valid_file(folder: Path) -> bytes:
    save_file(
        {
            "a.weight": torch.arange(24, dtype=torch.float32).view(4, 6),
            "b.weight": torch.ones(3, dtype=torch.float32),
        },
        folder / "model.safetensors",
    )
    return (folder / "model.safetensors").read_bytes()


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _pack(header: dict | bytes, body: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


@st.composite
def hostile_files(draw, template: bytes):
    header, body = _split(template)
    kind = draw(
        st.sampled_from(["length", "dtype", "shape", "offsets", "junk", "truncate", "bytes"])
    )
    name = draw(st.sampled_from(["a.weight", "b.weight"]))
    if kind == "length":
        length = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 200)))
        return _pack(header, body, length)
    if kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(DTYPES))
    elif kind == "shape":
        header[name]["shape"] = draw(
            st.one_of(
                st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
                st.lists(st.integers(0, 2**40), min_size=1, max_size=4),
                st.just("not a shape"),
            )
        )
    elif kind == "offsets":
        header[name]["data_offsets"] = draw(
            st.one_of(
                st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),
                st.tuples(st.integers(0, 200), st.integers(0, 2**62)).map(list),
            )
        )
    elif kind == "junk":
        raw = draw(st.binary(max_size=200))
        return _pack(raw, body)
    elif kind == "truncate":
        full = _pack(header, body)
        return full[: draw(st.integers(0, len(full) - 1))]
    else:  # flip bytes anywhere
        data = bytearray(template)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    return _pack(header, body)


def test_hostile_safetensors_end_in_clean_errors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "config.json").write_text('{"model_type": "llama"}')
    template = _valid_file(folder)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"refused": 0, "read": 0}

    @settings(
        max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(data=hostile_files(template))
    def check(data: bytes):
        (folder / "model.safetensors").write_bytes(data)
        before = sorted(p.name for p in folder.iterdir())
        try:
            ckpt = HFCheckpoint(folder)
            for name in ckpt.tensor_names():
                t = ckpt.get(name)
                assert t.numel() * t.element_size() <= len(data)
            outcomes["read"] += 1
        except BadModelFile as e:
            assert str(e)
            outcomes["refused"] += 1
        assert sorted(p.name for p in folder.iterdir()) == before  # nothing written

    check()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 512 * 1024, f"peak memory grew by {grown_kib} KiB on tiny files"
    assert outcomes["refused"] > CASES // 4


def test_missing_shard_and_bad_index_are_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    index = {
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({"a.weight": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    try:
        HFCheckpoint(tmp_path)
    except BadModelFile as e:
        assert "model-00002-of-00002.safetensors" in str(e) and "download" in str(e)
    else:
        raise AssertionError("a missing shard must be refused")
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    try:
        HFCheckpoint(tmp_path)
    except ItamaeError as e:
        assert "index" in str(e)
    else:
        raise AssertionError("a broken index must be refused")


def test_config_json_that_is_not_an_object(tmp_path):
    for text in ["[1, 2]", "\xff\xfe", "{", '"string"']:
        (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
        try:
            HFCheckpoint(tmp_path)
        except BadModelFile as e:
            assert "config.json" in str(e)
        else:
            raise AssertionError(text)
