"""Tensors that did not get the type their recipe asked for, and why.

ggml quantizes whole rows in blocks (32 values for Q8_0/Q4_0/Q5_x, 256 for K-quants), so
a tensor whose rows are not a multiple of the block size cannot take that type:
llama.cpp's quantizer (`tensor_type_fallback`, src/llama-quant.cpp) then gives it another
one (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0; F16 when even 32 does
not divide the rows), and Itamae's direct writer gives F16, as llama.cpp's converter does.
Such a file is bigger (or smaller) and more (or less) exact than the recipe's name says,
so the conversion says so, and the file records it under FALLBACK_KEY, where the quality
report (engine/evaluate.py) reads it.

llama.cpp's quantizer only reports its fallbacks in its log (one warning per tensor, the
count at the end); they are read from there (`LlamaLogCapture`), and the type each tensor
got is then read back from the written file.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType

FALLBACK_KEY = "itamae.quantize.fallbacks"
# The file's value is written before llama.cpp quantizes (which copies every key/value of
# its input) as this many spaces, and overwritten in place afterwards with the JSON padded
# to the same length, so no offset in the file moves and nothing is rewritten.
RESERVED_BYTES = 2048

# llama.cpp's warning, e.g. "warning: blk.0.ffn_down_exps.weight - ncols     32 not divisible
# by 256 (required for type    q4_K) -> falling back to    q5_0"
_WARNING = re.compile(
    r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by\s+(\d+) \(required for type\s+(\S+)\)"
    r".*?-> falling back to\s+(\S+)",
    re.S,
)


@dataclass(frozen=True)
class Fallback:
    tensor: str
    wanted: str  # ggml type names as gguf-py spells them (Q4_K, Q5_0, F16)
    got: str
    row_length: int


def summary(fallbacks: list[Fallback]) -> dict:
    """What `--json`, the file's metadata and the quality report say."""
    pairs = Counter((f.wanted, f.got) for f in fallbacks)
    return {
        "count": len(fallbacks),
        "by_type": [
            {"wanted": wanted, "got": got, "tensors": n}
            for (wanted, got), n in sorted(pairs.items())
        ],
    }


def describe(record: dict | None) -> str:
    """One plain sentence for the terminal, from `summary`'s dict ('' when none fell back)."""
    if not record or not record.get("count"):
        return ""
    n = record["count"]
    parts = ", ".join(f"{e['tensors']} {e['wanted']} -> {e['got']}" for e in record["by_type"])
    return (
        f"{n} tensor{'s' if n != 1 else ''} got another type than the recipe's because "
        f"their rows do not split into its blocks: {parts}"
    )


def direct_fallbacks(planned, target) -> list[Fallback]:
    """Itamae's own writer: tensors the recipe's block type could not take, written F16
    (not those whose type llama.cpp's converter pins, DeepSeek-V4's: a rule, not a lack)."""
    from converters.conversion.recipes import stays_f32  # (torch-heavy; the readers need not)

    return [
        Fallback(p.name, target.name, p.qtype.name, int(p.shape[-1]))
        for p in planned
        if p.carried is None and p.pinned is None and not stays_f32(p) and p.qtype != target
    ]


def parse_llama_log(text: str, got: dict[str, str]) -> list[Fallback]:
    """llama.cpp's fallback warnings -> Fallbacks, with the type each tensor actually has in
    the written file (`got`: GGUF tensor name -> type name)."""
    out = []
    for name, ncols, _block, wanted, fallback in _WARNING.findall(text):
        out.append(
            Fallback(name, _type_name(wanted), got.get(name, _type_name(fallback)), int(ncols))
        )
    return out


def _type_name(ggml_name: str) -> str:
    """ggml's spelling (q4_K, f16) -> gguf-py's (Q4_K, F16)."""
    return ggml_name.upper()


class LlamaLogCapture:
    """Collects llama.cpp's log while active (its quantizer reports fallbacks only there).

    Through the app's one log router (engine/llamacpp/logs.py): llama.cpp has a single
    process-wide callback, and replacing it here would leave the llama.cpp backend blind
    to the load log it reads the memory and placement from."""

    def __init__(self):
        self._pieces: list[str] = []
        self._capture = None

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def __enter__(self):
        from engine.llamacpp import logs  # imported here: the engine builds on converters

        self._capture = logs.captured()
        self._pieces = self._capture.__enter__()
        return self

    def __exit__(self, *exc):
        return self._capture.__exit__(*exc)


def reserved_value() -> str:
    return " " * RESERVED_BYTES


def record_in_file(path: Path, record: dict) -> None:
    """Overwrite the reserved FALLBACK_KEY value of a written GGUF with `record`, in place."""
    value = json.dumps(record, separators=(",", ":")).encode()
    if len(value) > RESERVED_BYTES:  # ~50 type pairs; more than ggml has fallback rules for
        value = json.dumps({"count": record["count"]}).encode()
    key = FALLBACK_KEY.encode()
    marker = (
        struct.pack("<Q", len(key))
        + key
        + struct.pack("<I", GGUFValueType.STRING)
        + struct.pack("<Q", RESERVED_BYTES)
    )
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as data:
        at = data.find(marker + b" " * RESERVED_BYTES)
        if at < 0:
            raise ValueError(f"{path.name} has no reserved {FALLBACK_KEY} value")
        start = at + len(marker)
        data[start : start + RESERVED_BYTES] = value.ljust(RESERVED_BYTES)
        data.flush()


def read_record(metadata: dict) -> dict | None:
    """The record from a GGUF's metadata; None for files that do not carry one."""
    raw = metadata.get(FALLBACK_KEY)
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("count"), int) else None
