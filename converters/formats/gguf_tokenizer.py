"""A Hugging Face `tokenizer.json` (byte-level or SentencePiece-style BPE) -> the
`tokenizer.ggml.*` keys of GGUF.

The pre-tokenizer's name (`tokenizer.ggml.pre`) is decided from the tokenizer's own split
steps (converters/formats/gguf_pre_tokenizer.py). Token list, token types and the rules for
added tokens follow llama.cpp's `TextModel.get_vocab_base`; merges, special token ids,
add_bos/add_eos and the chat template come from the gguf package's own `SpecialVocab`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
from gguf import TokenType

from converters.core.errors import BadModelFile, UnsupportedArchitecture
from converters.core.json_files import read_model_json
from converters.formats.gguf_pre_tokenizer import (
    GPT4O_REGEX as GPT4O_REGEX,  # fixtures read it here
)
from converters.formats.gguf_pre_tokenizer import pre_tokenizer_name
from converters.formats.tiktoken_vocab import (
    TIKTOKEN_FILE,
    has_tiktoken_vocabulary,
    tiktoken_tokenizer_json,
)


def looks_special(token: str) -> bool:
    """Added tokens llama.cpp treats as control tokens even when not marked special."""
    return (token.startswith("<|") and token.endswith("|>")) or (
        token.startswith("<｜") and token.endswith("｜>")
    )


@dataclass
class Vocabulary:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre ("default" for SentencePiece, which has no pre-tokenizer)
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool = False
    merges: list[str] | None = None  # where no tokenizer.json file has them (tiktoken)


def read_tokenizer(folder: Path) -> tuple[dict, Path]:
    """The folder's tokenizer.json, or the one its tiktoken vocabulary (Kimi-K2) amounts to;
    and the file it came from."""
    if has_tiktoken_vocabulary(folder):
        return tiktoken_tokenizer_json(folder), folder / TIKTOKEN_FILE
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise BadModelFile(
            f"{folder} has no tokenizer.json.",
            "Download the model's tokenizer files too (tokenizer.json, tokenizer_config.json).",
        )
    return read_model_json(path, "Re-download it."), path


def read_vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    tokenizer, path = read_tokenizer(folder)
    try:
        vocab = _vocabulary(tokenizer, vocab_size)
        if path.name == TIKTOKEN_FILE:  # no tokenizer.json for SpecialVocab to read them from
            vocab.merges = list(tokenizer["model"]["merges"])
        return vocab
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as e:
        # tokenizer.json comes from the model's publisher: a field of the wrong type or shape
        raise BadModelFile(
            f"{path} is not a tokenizer.json that the tokenizers library writes "
            f"({type(e).__name__}: {e}).",
            "Re-download the model's tokenizer.json.",
        ) from e


def _vocabulary(tokenizer: dict, vocab_size: int) -> Vocabulary:
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedArchitecture(
            f"The tokenizer is {model.get('type')!r}; Itamae writes BPE tokenizers (byte-level "
            "as GPT-2/Qwen/Llama 3/DeepSeek, or SentencePiece-style as Llama 2/Mistral/Mixtral).",
            "Use llama.cpp's convert_hf_to_gguf.py for this model.",
        )
    tokens, types = _tokens(model, tokenizer, vocab_size)
    if model.get("byte_fallback"):
        # llama.cpp's converter names SentencePiece's (absent) pre-tokenizer "default"
        extras = _sentencepiece_extras(model, tokenizer, tokens, types)
        return Vocabulary("llama", "default", tokens, types, *extras)
    return Vocabulary("gpt2", pre_tokenizer_name(tokenizer), tokens, types)


BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPIECE_UNDERLINE = "\u2581"  # SentencePiece's visible space


def _sentencepiece_extras(model, tokenizer, tokens, types) -> tuple[list[float], bool]:
    """Scores and add_space_prefix for llama.cpp's SentencePiece tokenizer ("llama").

    A SentencePiece BPE vocabulary in tokenizer.json keeps its merge order but not its
    scores; llama.cpp merges the adjacent pair whose joined token scores highest, so the
    score of a token is minus the rank of the merge that makes it (earlier merges first),
    which is how the hub's converters derived the merges from the scores to begin with."""
    rank = {}
    for i, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    scores = [-float(rank[t]) if t in rank else 0.0 for t in tokens]
    for i, token in enumerate(tokens):
        if types[i] == TokenType.NORMAL and BYTE_TOKEN.fullmatch(token):
            types[i] = int(TokenType.BYTE)
        elif token == model.get("unk_token"):
            types[i] = int(TokenType.UNKNOWN)
    return scores, _adds_space_prefix(tokenizer)


def _adds_space_prefix(tokenizer: dict) -> bool:
    """Llama 2/Mistral prepend "▁" to the text: by a Metaspace pre-tokenizer or by a
    Prepend normalizer (newer tokenizers.json)."""
    steps = []
    for part in (tokenizer.get("normalizer"), tokenizer.get("pre_tokenizer")):
        if part:
            steps += part.get("normalizers") or part.get("pretokenizers") or [part]
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == SPIECE_UNDERLINE:
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never" and step.get(
                "add_prefix_space", True
            )
    return False


def _tokens(model: dict, tokenizer: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in tokenizer.get("added_tokens", [])}
    for i, a in added.items():
        by_id[i] = a["content"]
    if by_id and max(by_id) >= vocab_size:
        raise BadModelFile(
            f"The tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}.",
            "The tokenizer does not belong to this model.",
        )
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows the tokenizer never produces
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special") or looks_special(by_id[i])
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _hf_bpe_vocabulary(
    folder: Path, vocab: Vocabulary, model: str, visible: frozenset[str]
) -> Vocabulary:
    """A SentencePiece-style BPE as llama.cpp's converter writes it with gguf's LlamaHfVocab
    under the family's own tokenizer model (Gemma 4): merges carried, every score -1000,
    byte tokens BYTE, the tokenizer's named special tokens CONTROL, `visible` USER_DEFINED
    (markers its chat parser must see), everything else NORMAL."""
    config_path = folder / "tokenizer_config.json"
    config = read_model_json(config_path, "Re-download it.") if config_path.is_file() else {}
    named = [config.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    named += [config.get(k) for k in ("mask_token", "sep_token", "cls_token")]
    named += list(
        config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    )
    special = {t["content"] if isinstance(t, dict) else t for t in named if t}
    types = []
    for token in vocab.tokens:
        if BYTE_TOKEN.fullmatch(token):
            types.append(TokenType.BYTE)
        elif token in visible:
            types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.CONTROL if token in special else TokenType.NORMAL)
    scores = [-1000.0] * len(vocab.tokens)
    return Vocabulary(model, "", vocab.tokens, [int(t) for t in types], scores, False)


def add_tokenizer(
    writer: gguf.GGUFWriter,
    folder: Path,
    vocab_size: int,
    named: dict[str, str] | None = None,
    model: str = "",
    visible: frozenset[str] = frozenset(),
    chat_template: str = "",
) -> Vocabulary:
    """`named`: special token kind ("eot", "eom", ...) -> the token's text, for families whose
    llama.cpp converter names them (ArchSpec.special_tokens); set where the vocabulary has
    the token and the tokenizer's own files did not already say. `model`: the tokenizer
    model llama.cpp's converter names for the family (ArchSpec.tokenizer_model), if any;
    `visible`: its tokens kept USER_DEFINED (ArchSpec.visible_tokens). `chat_template`: the
    family's own (ArchSpec.chat_template), written when the folder ships none."""
    vocab = read_vocabulary(folder, vocab_size)
    own_model = bool(model) and vocab.model == "llama"  # SentencePiece-style BPE
    if own_model:
        vocab = _hf_bpe_vocabulary(folder, vocab, model, visible)
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(vocab.add_space_prefix)
    # SpecialVocab logs a warning for every post-processor detail it does not use (e.g. the
    # pair template); none of them changes the file, so they are not shown to the person.
    vocab_logger = logging.getLogger("gguf.vocab")
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)
    try:
        # SentencePiece merges by score in llama.cpp; only byte-level BPE carries merges
        merges = (vocab.model == "gpt2" or own_model) and vocab.merges is None
        special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=vocab_size)
    finally:
        vocab_logger.setLevel(level)
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    for kind, token in (named or {}).items():
        if token in ids:
            special._set_special_token(kind, ids[token])  # gguf-py's own rule: first one wins
    if not special.chat_template and chat_template:
        special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)
    if own_model and not special.add_special_token.get("bos"):
        writer.add_add_bos_token(True)  # llama.cpp's converter (and loader) always add BOS
    return vocab
