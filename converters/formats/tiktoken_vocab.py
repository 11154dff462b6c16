"""A tiktoken vocabulary as Moonshot publishes Kimi-K2's -> a `tokenizer.json` (tokenizers).

Kimi-K2 (K2.5, Kimi-Linear) ship no tokenizer.json. The tokenizer is `tiktoken.model` (one
line per token: its bytes in base64 and its rank), tokenizer_config.json (`added_tokens_decoder`:
the special tokens, whose ids follow the ranks) and `tokenization_kimi.py`, remote code that
builds a `tiktoken.Encoding` from those with its split pattern `pat_str` and reserves 256 ids
after the ranks for special tokens (named `<|reserved_token_{id}|>` where the config names
none). Itamae never runs that file: it reads `pat_str` out of it as data (the string literals
of the assignment, found by Python's own parser) and builds the equivalent tokenizer.json,
which the GGUF writer (converters/formats/gguf_tokenizer.py) and the torch engine then read
as any other.

The merges are recovered from the ranks as llama.cpp's converter does for "kimi-k2"
(conversion/deepseek.py, `QwenModel.bpe`; transformers' TikTokenConverter the same): a token's
merge is the last pair tiktoken's byte-pair loop joins on its own bytes below its rank. Tokens
are spelled in GPT-2's byte-to-unicode alphabet, and `ignore_merges` is set because tiktoken
takes a piece that is itself a token as that token before merging anything.
"""

from __future__ import annotations

import ast
import base64
import binascii
from pathlib import Path

from converters.core.errors import BadModelFile, UnsupportedArchitecture
from converters.core.json_files import read_model_json

TIKTOKEN_FILE = "tiktoken.model"
RESERVED_SPECIAL_TOKENS = 256  # num_reserved_special_tokens in tokenization_kimi.py


def has_tiktoken_vocabulary(folder: Path) -> bool:
    return not (folder / "tokenizer.json").is_file() and (folder / TIKTOKEN_FILE).is_file()


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of every byte (openai/gpt-2 encoder.py `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    spelling, shift = {}, 0
    for b in range(256):
        if b in printable:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + shift)
            shift += 1
    return spelling


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as e:
            raise BadModelFile(
                f"{path} line {n} is not a base64 token and its rank ({e}).",
                "Re-download the model's tiktoken.model.",
            ) from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise BadModelFile(
            f"The ranks in {path} are not 0..{len(ranks) - 1}, each once.",
            "Re-download the model's tiktoken.model.",
        )
    return ranks


def published_pattern(folder: Path, config: dict) -> str:
    """`pat_str` of the tokenizer class tokenizer_config.json's auto_map names, read (not run)
    from its module in the folder."""
    auto = (config.get("auto_map") or {}).get("AutoTokenizer") or []
    target = next((a for a in (auto if isinstance(auto, list) else [auto]) if a), "")
    module, _, cls = target.rpartition(".")
    path = folder / f"{module.rpartition('--')[2]}.py"
    if not module or not path.is_file():
        raise UnsupportedArchitecture(
            f"{folder} has a tiktoken.model but no tokenizer module that says how text is split "
            f"(tokenizer_config.json's auto_map names {target!r}).",
            "Download the model's tokenizer files too (tiktoken.model, tokenizer_config.json, "
            "tokenization_*.py).",
        )
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                pattern = _pattern_literal(stmt)
                if pattern:
                    return pattern
    raise UnsupportedArchitecture(
        f"{path.name} does not spell class {cls}'s pat_str as string literals, so Itamae cannot "
        "read how the tokenizer splits text (it never runs code from a model folder).",
        "Use llama.cpp's convert_hf_to_gguf.py for this model.",
    )


def _pattern_literal(stmt: ast.stmt) -> str:
    """`pat_str = "..."` or `pat_str = "|".join([...literals...])`, else ""."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
        return ""
    target, value = stmt.targets[0], stmt.value
    if not (isinstance(target, ast.Name) and target.id == "pat_str"):
        return ""
    try:
        func = value.func if isinstance(value, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr == "join" and len(value.args) == 1:
            return ast.literal_eval(func.value).join(ast.literal_eval(value.args[0]))
        pattern = ast.literal_eval(value)
        return pattern if isinstance(pattern, str) else ""
    except (ValueError, TypeError, AttributeError):
        return ""


def recovered_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The pair each multi-byte token is made from, in rank order (llama.cpp's QwenModel.bpe)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = _byte_pairs(ranks, token, rank)
            if len(parts) == 2:
                merges.append((parts[0], parts[1]))
    return merges


def _byte_pairs(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def tiktoken_tokenizer_json(folder: Path) -> dict:
    """The tokenizer.json (as the tokenizers library reads it) equivalent to the folder's
    tiktoken tokenizer."""
    config_path = folder / "tokenizer_config.json"
    config = read_model_json(config_path, "Re-download it.") if config_path.is_file() else {}
    pattern = published_pattern(folder, config)
    ranks = read_ranks(folder / TIKTOKEN_FILE)
    spelling = byte_to_unicode()

    def spelled(b: bytes) -> str:
        return "".join(spelling[x] for x in b)

    vocab = {spelled(token): rank for token, rank in ranks.items()}
    merges = [f"{spelled(a)} {spelled(b)}" for a, b in recovered_merges(ranks)]
    named = {
        int(i): t.get("content") for i, t in (config.get("added_tokens_decoder") or {}).items()
    }
    n_base = len(ranks)
    added = [
        {
            "id": i,
            "content": named.get(i) or f"<|reserved_token_{i}|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in range(n_base, n_base + RESERVED_SPECIAL_TOKENS)
    ]
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", **byte_level},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
