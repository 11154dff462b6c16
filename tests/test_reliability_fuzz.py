"""Hostile model files (issue #10): GGUF headers and metadata, config.json, tokenizer files.

Model files come from strangers. Every reader a downloaded file reaches is fed about 2,000
hypothesis cases (bounded, CI-sized), each built from a valid file by mutating what an
attacker controls: counts, lengths, types, values, nesting. Every case must end either in
a result or in an `ItamaeError` subclass with a message: no other exception type, no hang
(a per-case alarm), no allocation larger than the file justifies (tracemalloc's peak per
case, numpy and Python objects included), and no file written next to the input.

Safetensors headers are fuzzed in tests/test_hostile_safetensors.py and hostile chat
templates in tests/test_chat_template.py; this file covers the other readers:

- GGUF through both readers: converters.facts.inspection (gguf-py's GGUFReader) and the engine's
  own header reader (converters/gguf_header.py + engine/llamacpp/gguf_layout.read_gguf).
- config.json through converters.facts.inspection.inspect (an HF folder) and the torch engine's
  config loading (engine.torch.models.model_class(...).Args.from_dict).
- tokenizer.json / tokenizer_config.json through converters.formats.gguf_tokenizer.read_vocabulary
  (what convert writes into a GGUF) and the torch engine's engine.torch.text.ModelText.

The GGUF layout written here follows gguf-py's docs (ggml docs/gguf.md): magic, version,
tensor count, key/value count, typed key/values, tensor infos, aligned data.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from converters.core.errors import ItamaeError

CASES = int(os.environ.get("ITAMAE_FUZZ_CASES", "2000"))  # fewer while debugging
CASE_SECONDS = 10  # a case still running after this is a hang
# what one case may allocate beyond the file it reads (parsers, dicts, numpy views)
BASE_ALLOWANCE = 32 * 2**20
FILE_FACTOR = 64

FUZZ = settings(
    max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"a case ran longer than {CASE_SECONDS} s")


class Outcomes:
    """Runs one case under the checks shared by every reader; counts how cases ended."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.counts = {"read": 0, "refused": 0}
        self.peak = 0

    def run(self, read, size: int) -> None:
        before = sorted(p.name for p in self.folder.rglob("*"))
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_SECONDS)
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        try:
            read()
            self.counts["read"] += 1
        except ItamaeError as e:
            assert str(e).strip(), "an ItamaeError without a message"
            self.counts["refused"] += 1
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        peak = tracemalloc.get_traced_memory()[1] - start
        self.peak = max(self.peak, peak)
        assert peak <= BASE_ALLOWANCE + FILE_FACTOR * size, (
            f"a {size}-byte input made the reader allocate {peak} bytes"
        )
        assert sorted(p.name for p in self.folder.rglob("*")) == before, "a file was written"


@contextlib.contextmanager
def traced_run(folder: Path):
    """Tracemalloc on for the whole run; process peak RSS growth checked at the end."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    outcomes = Outcomes(folder)
    try:
        yield outcomes
    finally:
        tracemalloc.stop()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 512 * 1024, f"peak RSS grew by {grown_kib} KiB reading tiny files"


# ---------------------------------------------------------------------------------------
# GGUF: a hand-written writer, so that every count, length and type can lie.

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
              BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}  # fmt: skip


def gguf_string(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def gguf_value(kind: int, value) -> bytes:
    if kind == STRING:
        return gguf_string(value)
    if kind == ARRAY:
        item_kind, items, count = value
        body = b"".join(gguf_value(item_kind, v) for v in items)
        return struct.pack("<IQ", item_kind, len(items) if count is None else count) + body
    return struct.pack(SCALAR_FMT[kind], value)


def gguf_file(kvs, tensors, n_kv=None, n_tensors=None, version=3, data=b"") -> bytes:
    """kvs: [(key, kind, value)]; tensors: [(name, dims, ggml type, offset)]."""
    out = [b"GGUF", struct.pack("<I", version)]
    out.append(struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                           len(kvs) if n_kv is None else n_kv))  # fmt: skip
    for key, kind, value in kvs:
        out += [gguf_string(key), struct.pack("<I", kind), gguf_value(kind, value)]
    for name, dims, ggml_type, offset in tensors:
        out += [gguf_string(name), struct.pack("<I", len(dims))]
        out += [struct.pack("<Q", d) for d in dims]
        out += [struct.pack("<IQ", ggml_type, offset)]
    blob = b"".join(out)
    blob += b"\0" * (-len(blob) % 32)
    return blob + data


def valid_gguf_parts():
    """A tiny llama-architecture MoE GGUF: real keys, one F32 and one Q8_0 tensor."""
    kvs = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "fuzz"),
        ("general.alignment", U32, 32),
        ("general.file_type", U32, 7),
        ("llama.block_count", U32, 1),
        ("llama.context_length", U32, 128),
        ("llama.embedding_length", U32, 32),
        ("llama.feed_forward_length", U32, 64),
        ("llama.attention.head_count", U32, 4),
        ("llama.attention.head_count_kv", U32, 2),
        ("llama.expert_count", U32, 4),
        ("llama.expert_used_count", U32, 2),
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b", "c", "<s>"], None)),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, -1.0, -2.0, 0.0], None)),
        ("tokenizer.chat_template", STRING, "{% for m in messages %}{{ m.content }}{% endfor %}"),
    ]
    tensors = [
        ("blk.0.attn_norm.weight", [32], 0, 0),  # F32: 128 bytes
        ("blk.0.ffn_up_exps.weight", [32, 4, 2], 8, 128),  # Q8_0: 8 blocks x 34 bytes
    ]
    data = b"\0" * (128 + 8 * 34)
    return kvs, tensors, data


HOSTILE_INTS = st.one_of(
    st.integers(0, 8),
    st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**40, 2**62, 2**63 - 1, 2**64 - 1]),
)
KEY_NAMES = [k for k, _, _ in valid_gguf_parts()[0]] + [
    "split.count",
    "llama.attention.key_length",
    "llama.attention.key_length_mla",
    "deepseek2.expert_gating_func",
    "itamae.recipe",
    "tokenizer.ggml.bos_token_id",
]


@st.composite
def hostile_kv(draw):
    key = draw(st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=12)))
    kind = draw(st.sampled_from([*SCALAR_FMT, STRING, ARRAY]))
    if kind == STRING:
        value = draw(st.one_of(st.text(max_size=20), st.sampled_from(["llama", "deepseek2"])))
    elif kind == ARRAY:
        item_kind = draw(st.sampled_from([U8, I32, U32, F32, STRING, U64]))
        if item_kind == STRING:
            items = draw(st.lists(st.text(max_size=5), max_size=4))
        elif item_kind == F32:
            items = draw(st.lists(st.floats(width=32), max_size=4))
        else:
            lo, hi = (0, 255) if item_kind == U8 else (0, 2**31 - 1)
            items = draw(st.lists(st.integers(lo, hi), max_size=4))
        count = draw(st.one_of(st.none(), HOSTILE_INTS))
        value = (item_kind, items, count)
    elif kind in (F32, F64):
        value = draw(st.floats(width=32 if kind == F32 else 64))
    elif kind == BOOL:
        value = draw(st.booleans())
    else:
        fmt = SCALAR_FMT[kind]
        bits = struct.calcsize(fmt) * 8
        signed = fmt[-1].islower()
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        value = draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1])))
    return key, kind, value


@st.composite
def hostile_ggufs(draw) -> bytes:
    kvs, tensors, data = valid_gguf_parts()
    kind = draw(
        st.sampled_from(["kv", "replace", "counts", "tensor", "strlen", "truncate", "flip"])
    )
    if kind == "kv":  # extra or duplicated keys of any type and value
        for _ in range(draw(st.integers(1, 4))):
            kvs.insert(draw(st.integers(0, len(kvs))), draw(hostile_kv()))
    elif kind == "replace":  # a known key given a hostile type or value
        i = draw(st.integers(0, len(kvs) - 1))
        _, kind_, value = draw(hostile_kv())
        kvs[i] = (kvs[i][0], kind_, value)
    elif kind == "counts":
        return gguf_file(kvs, tensors, n_kv=draw(st.one_of(st.none(), HOSTILE_INTS)),
                         n_tensors=draw(st.one_of(st.none(), HOSTILE_INTS)),
                         version=draw(st.sampled_from([1, 2, 3, 4, 2**32 - 1])), data=data)  # fmt: skip
    elif kind == "tensor":
        i = draw(st.integers(0, len(tensors) - 1))
        dims = draw(st.lists(HOSTILE_INTS, max_size=6))
        tensors[i] = (
            draw(st.one_of(st.just(tensors[i][0]), st.text(max_size=10))),
            dims,
            draw(st.one_of(st.sampled_from([0, 1, 8, 12, 30]), st.integers(0, 2**32 - 1))),
            draw(st.one_of(st.just(tensors[i][3]), HOSTILE_INTS)),
        )
    elif kind == "strlen":  # a string whose length prefix lies
        blob = bytearray(gguf_file(kvs, tensors, data=data))
        at = blob.find(b"general.name") - 8
        blob[at : at + 8] = struct.pack("<Q", draw(HOSTILE_INTS))
        return bytes(blob)
    full = gguf_file(kvs, tensors, data=data)
    if kind == "truncate":
        return full[: draw(st.integers(0, len(full) - 1))]
    if kind == "flip":
        blob = bytearray(full)
        for _ in range(draw(st.integers(1, 8))):
            blob[draw(st.integers(0, min(len(blob), 700) - 1))] = draw(st.integers(0, 255))
        return bytes(blob)
    return full


def test_valid_gguf_template_reads_in_both_readers(tmp_path):
    """The template is a real GGUF: gguf-py, our header reader and inspect all accept it."""
    import gguf

    from converters.facts.inspection import inspect
    from engine.llamacpp.gguf_layout import read_gguf

    path = tmp_path / "valid.gguf"
    path.write_bytes(gguf_file(*valid_gguf_parts()[:2], data=valid_gguf_parts()[2]))
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == [
        "blk.0.attn_norm.weight",
        "blk.0.ffn_up_exps.weight",
    ]
    header = read_gguf(path)
    assert header.layout.n_experts == 4 and header.n_vocab == 4
    info = inspect(path)
    assert info.n_experts == 4 and info.arch == "mixtral" and info.n_layers == 1


@pytest.mark.parametrize("count", [513, 10**8, 2**40, 2**64 - 1])
def test_a_huge_block_count_is_refused_before_anything_per_block_is_made(tmp_path, count):
    """Found by the fuzz below: read_gguf built one BlockWeights per declared block (10**8
    blocks: minutes and gigabytes). Now refused past llama.cpp's LLAMA_MAX_LAYERS."""
    from engine.llamacpp.gguf_layout import read_gguf

    kvs, tensors, data = valid_gguf_parts()
    kvs = [(k, U64, count) if k == "llama.block_count" else (k, t, v) for k, t, v in kvs]
    path = tmp_path / "layers.gguf"
    path.write_bytes(gguf_file(kvs, tensors, data=data))
    with traced_run(tmp_path) as outcomes:
        outcomes.run(lambda: read_gguf(path), path.stat().st_size)
    assert outcomes.counts == {"read": 0, "refused": 1}


def test_a_huge_layer_count_in_config_json_is_refused(tmp_path):
    from converters.facts.inspection import inspect

    _hf_folder(tmp_path)
    for layers in (513, 10**15, -1, "32", 1.5e300):
        (tmp_path / "config.json").write_text(
            json.dumps({**_fixture_config(), "num_hidden_layers": layers})
        )
        with traced_run(tmp_path) as outcomes:
            outcomes.run(lambda: inspect(tmp_path), 4096)
        assert outcomes.counts["refused"] == 1 or layers == "32", layers


@pytest.mark.parametrize("reader", ["inspect", "gguf_header"])
def test_hostile_gguf_files_end_in_clean_errors(tmp_path, reader):
    from converters.facts.inspection import inspect
    from engine.llamacpp.gguf_layout import read_gguf

    read = {"inspect": inspect, "gguf_header": read_gguf}[reader]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(gguf_file(*valid_gguf_parts()[:2], data=valid_gguf_parts()[2]))
    read(path)  # imports and caches warmed outside the measured cases

    with traced_run(tmp_path) as outcomes:

        @FUZZ
        @given(blob=hostile_ggufs())
        def check(blob):
            path.write_bytes(blob)
            outcomes.run(lambda: read(path), len(blob))

        check()
    assert outcomes.counts["refused"] > CASES // 4, outcomes.counts
    assert outcomes.counts["read"] > CASES // 20, outcomes.counts  # mutations also stay valid


# ---------------------------------------------------------------------------------------
# config.json

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 10**18, 2**63, 4096]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _fixture_config() -> dict:
    """A real MoE config.json as published (Qwen3-MoE fields), at fixture size."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": 32,
        "intermediate_size": 64,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "vocab_size": 64,
        "max_position_embeddings": 128,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "quantization_config": None,
        "eos_token_id": 2,
    }


@st.composite
def hostile_configs(draw) -> bytes:
    config = _fixture_config()
    kind = draw(st.sampled_from(["values", "values", "drop", "model_type", "text", "nesting"]))
    if kind == "values":
        for _ in range(draw(st.integers(1, 4))):
            key = draw(st.one_of(st.sampled_from(sorted(config)), st.text(max_size=8)))
            config[key] = draw(HOSTILE_VALUES)
        if draw(st.booleans()):
            config[draw(st.sampled_from(["rope_scaling", "rope_parameters"]))] = draw(
                st.dictionaries(
                    st.sampled_from(
                        [
                            "rope_type",
                            "type",
                            "factor",
                            "rope_theta",
                            "original_max_position_embeddings",
                            "beta_fast",
                        ]
                    ),
                    HOSTILE_VALUES,
                    max_size=3,
                )  # fmt: skip
            )
    elif kind == "drop":
        for key in draw(st.lists(st.sampled_from(sorted(config)), max_size=6)):
            config.pop(key, None)
    elif kind == "model_type":
        config["model_type"] = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "mixtral",
                        "qwen2_moe",
                        "olmoe",
                        "deepseek_v2",
                        "deepseek_v3",
                        "llama",
                        "bert",
                        "",
                    ]
                ),  # fmt: skip
                HOSTILE_VALUES,
            )
        )
    elif kind == "text":  # not JSON, not UTF-8, not an object
        return draw(
            st.one_of(
                st.binary(max_size=64),
                st.sampled_from([b"[1, 2]", b'"config"', b"null", b"{", b"\xff\xfe{}", b""]),
            )
        )
    else:  # deep nesting: json.loads recurses once per level
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        return b'{"model_type": ' + b"[" * depth + b"]" * depth + b"}"
    return json.dumps(config).encode()


def _hf_folder(folder: Path) -> None:
    save_file(
        {
            "model.embed_tokens.weight": np.zeros((64, 32), np.float32),
            "model.layers.0.mlp.experts.0.up_proj.weight": np.zeros((16, 32), np.float32),
        },
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(json.dumps(_fixture_config()))


def _torch_config(path: Path):
    """The torch engine's config loading, as TorchBackend does it (engine/torch/backend.py):
    config.json through converters.formats.hf_reader, then the architecture's Args.from_dict."""
    from converters.formats.hf_reader import _load_config
    from engine.torch.models import model_class

    config = _load_config(path.parent)
    model_class(str(config.get("model_type", ""))).Args.from_dict(config)


@pytest.mark.parametrize(
    "reader",
    [
        "inspect",
        "torch",
    ],
)
def test_hostile_config_json_ends_in_clean_errors(tmp_path, reader):
    from converters.facts.inspection import inspect

    _hf_folder(tmp_path)
    config = tmp_path / "config.json"
    read = {"inspect": lambda: inspect(tmp_path), "torch": lambda: _torch_config(config)}[reader]
    read()

    with traced_run(tmp_path) as outcomes:

        @FUZZ
        @given(blob=hostile_configs())
        def check(blob):
            config.write_bytes(blob)
            outcomes.run(read, len(blob) + 4096)

        check()
    assert outcomes.counts["refused"] > CASES // 10, outcomes.counts


# ---------------------------------------------------------------------------------------
# tokenizer.json / tokenizer_config.json

TOKENIZER_TEMPLATE = Path(__file__).resolve().parents[1] / "assets" / "demo" / "hf"


def _tokenizer_template(tmp_path_factory) -> Path:
    """A real byte-level BPE tokenizer folder: the bundled demo's, else the test fixture's."""
    if (TOKENIZER_TEMPLATE / "tokenizer.json").is_file():
        return TOKENIZER_TEMPLATE
    from tests.fixtures.checkpoints import fixture_path

    return fixture_path("qwen3_moe")


def _shrink(tokenizer: dict, keep: int) -> dict:
    """The template's tokenizer with its first `keep` ids, so each case parses quickly."""
    model = tokenizer["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < keep}
    merges = []
    for m in model.get("merges") or []:
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(m)
    model.update(vocab=vocab, merges=merges)
    tokenizer["added_tokens"] = [
        dict(a, id=keep + n) for n, a in enumerate(tokenizer.get("added_tokens") or [])
    ]
    return tokenizer


@st.composite
def hostile_tokenizers(draw, template: dict, template_config: dict) -> tuple[bytes, bytes]:
    tok = json.loads(json.dumps(template))
    tc = json.loads(json.dumps(template_config))
    kind = draw(
        st.sampled_from(["model", "vocab", "added", "merges", "pre", "config", "text", "nesting"])
    )
    if kind == "model":
        key = draw(st.sampled_from(["type", "byte_fallback", "unk_token", "vocab", "merges"]))
        tok["model"][key] = draw(HOSTILE_VALUES)
        if draw(st.booleans()):
            tok["model"] = draw(HOSTILE_VALUES)
    elif kind == "vocab":
        vocab = tok["model"]["vocab"]
        for _ in range(draw(st.integers(1, 4))):
            vocab[draw(st.text(max_size=4))] = draw(
                st.one_of(
                    st.integers(-(2**40), 2**40), st.sampled_from([-1, 10**12]), HOSTILE_VALUES
                )  # fmt: skip
            )
    elif kind == "added":
        tok["added_tokens"] = draw(
            st.one_of(
                HOSTILE_VALUES,
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "id": st.one_of(st.integers(-5, 2**40), HOSTILE_VALUES),
                            "content": st.one_of(st.text(max_size=6), HOSTILE_VALUES),
                            "special": st.booleans(),
                        }  # fmt: skip
                    ),
                    max_size=3,
                ),
            )
        )
    elif kind == "merges":
        tok["model"]["merges"] = draw(
            st.lists(
                st.one_of(
                    st.text(max_size=6), st.lists(st.text(max_size=3), max_size=3), HOSTILE_VALUES
                ),
                max_size=4,
            )  # fmt: skip
        )
    elif kind == "pre":
        tok["pre_tokenizer"] = draw(
            st.one_of(
                HOSTILE_VALUES,
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(
                            ["Split", "Sequence", "ByteLevel", "Metaspace", "?"]
                        ),
                        "pattern": st.one_of(
                            st.fixed_dictionaries({"Regex": st.text(max_size=8)}), HOSTILE_VALUES
                        ),
                        "pretokenizers": st.one_of(
                            st.lists(HOSTILE_VALUES, max_size=2), HOSTILE_VALUES
                        ),
                    }  # fmt: skip
                ),
            )
        )
    elif kind == "config":
        for key in draw(
            st.lists(
                st.sampled_from(
                    ["chat_template", "bos_token", "eos_token", "add_bos_token", "model_max_length"]
                ),
                min_size=1,
            )  # fmt: skip
        ):
            tc[key] = draw(
                st.one_of(
                    HOSTILE_VALUES,
                    st.lists(HOSTILE_VALUES, max_size=2),
                    st.lists(
                        st.fixed_dictionaries({"name": HOSTILE_VALUES, "template": HOSTILE_VALUES}),
                        max_size=2,
                    ),
                )  # fmt: skip
            )
    elif kind == "text":
        which = draw(st.booleans())
        junk = draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"[]", b"null", b"{"])))
        return (junk, json.dumps(tc).encode()) if which else (json.dumps(tok).encode(), junk)
    else:
        depth = draw(st.sampled_from([1000, 100_000]))
        nested = b'{"model": ' + b"[" * depth + b"]" * depth + b"}"
        return (nested, json.dumps(tc).encode()) if draw(st.booleans()) else (
            json.dumps(tok).encode(), nested)  # fmt: skip
    return json.dumps(tok).encode(), json.dumps(tc).encode()


def _gguf_vocabulary(folder: Path) -> None:
    from converters.formats.gguf_tokenizer import read_vocabulary

    read_vocabulary(folder, 600)


def _torch_text(folder: Path) -> None:
    from engine.torch.text import ModelText

    ModelText(folder, {"eos_token_id": 2})


@pytest.mark.parametrize(
    "reader",
    [
        "gguf_tokenizer",
        "torch",
    ],
)
def test_hostile_tokenizer_files_end_in_clean_errors(tmp_path, tmp_path_factory, reader):
    source = _tokenizer_template(tmp_path_factory)
    template = _shrink(json.loads((source / "tokenizer.json").read_text("utf-8")), 500)
    template_config = json.loads((source / "tokenizer_config.json").read_text("utf-8"))
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("special_tokens_map.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    (folder / "tokenizer.json").write_text(json.dumps(template))
    (folder / "tokenizer_config.json").write_text(json.dumps(template_config))
    read = {"gguf_tokenizer": _gguf_vocabulary, "torch": _torch_text}[reader]
    read(folder)  # the shrunk template is valid

    with traced_run(folder) as outcomes:

        @FUZZ
        @given(files=hostile_tokenizers(template, template_config))
        def check(files):
            tok, tc = files
            (folder / "tokenizer.json").write_bytes(tok)
            (folder / "tokenizer_config.json").write_bytes(tc)
            outcomes.run(lambda: read(folder), len(tok) + len(tc))

        check()
    assert outcomes.counts["refused"] > CASES // 10, outcomes.counts
