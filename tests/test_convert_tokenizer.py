"""How Itamae names a tokenizer's pre-tokenizer for llama.cpp: from its split regexes,
compared with the patterns llama.cpp implements, refusing the rest (no llama.cpp needed)."""

from __future__ import annotations

import pytest

from converters.core.errors import UnsupportedArchitecture
from converters.formats.gguf_pre_tokenizer import (
    DEEPSEEK_LLM_REGEXES,
    DEEPSEEK_V3_REGEXES,
    GPT2_REGEX,
    KIMI_K2_REGEX,
    LLAMA3_REGEX,
    QWEN2_REGEX,
    pre_tokenizer_name,
)
from tests.fixtures.llamacpp_reference import llama_cpp_source


def split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def sequence(*steps) -> dict:
    return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": list(steps)}}


BYTE_LEVEL = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": False,
    "use_regex": False,
}


@pytest.mark.parametrize(
    ("tokenizer", "name"),
    [
        (sequence(split(QWEN2_REGEX), BYTE_LEVEL), "qwen2"),
        (sequence(split(LLAMA3_REGEX), BYTE_LEVEL), "llama-bpe"),
        ({"pre_tokenizer": {**BYTE_LEVEL, "use_regex": True}}, "gpt-2"),
        (sequence(*(split(r) for r in DEEPSEEK_V3_REGEXES), BYTE_LEVEL), "deepseek-v3"),
        # StarCoder's as published: every digit alone, then GPT-2's regex
        (
            sequence(
                {"type": "Digits", "individual_digits": True}, {**BYTE_LEVEL, "use_regex": True}
            ),
            "starcoder",
        ),
    ],
)
def test_known_patterns_get_llama_cpp_names(tokenizer, name):
    assert pre_tokenizer_name(tokenizer) == name


def test_falcon_deepseek_coder_and_kimi_as_published_get_llama_cpp_names():
    """Falcon's Punctuation/ByteLevel/Digits/Split, DeepSeek-Coder's splits with individual
    digits (tokenizer.json as published), Kimi-K2's tiktoken pat_str."""
    falcon = sequence(
        {"type": "Punctuation", "behavior": "Contiguous"},
        {**BYTE_LEVEL, "use_regex": True},
        {"type": "Digits", "individual_digits": False},
        split("[0-9][0-9][0-9]"),
    )
    assert pre_tokenizer_name(falcon) == "falcon"
    coder = [split(r) for r in (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+")]
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer_name(sequence(*coder, digits, BYTE_LEVEL)) == "deepseek-coder"
    assert pre_tokenizer_name(sequence(split(KIMI_K2_REGEX), BYTE_LEVEL)) == "kimi-k2"
    isolated = {"type": "Punctuation", "behavior": "Isolated"}
    with pytest.raises(UnsupportedArchitecture, match="Punctuation"):
        pre_tokenizer_name(sequence(isolated, {**BYTE_LEVEL, "use_regex": True}))


def test_deepseek_llm_letters_are_llama_cpps_characters():
    """DeepSeek-LLM's letter class has characters NFC folds into others (U+1F7D -> U+03CE,
    which turned a range backwards and made the pattern fail to compile): Itamae's spelling
    is llama.cpp's, character for character, and compiles."""
    from tokenizers import Regex

    source = (llama_cpp_source() / "src" / "llama-vocab.cpp").read_text(encoding="utf-8")
    start = source.index('"\\\\s?[A-Za-z')
    theirs = source[start + 1 : source.index('",', start)].replace("\\\\", "\\")
    assert DEEPSEEK_LLM_REGEXES[1] == theirs
    for pattern in DEEPSEEK_LLM_REGEXES:
        Regex(pattern)


def test_raw_newlines_and_escapes_are_the_same_pattern():
    """tokenizer.json files spell \\r\\n either as escapes or as the characters themselves."""
    raw = [r.replace(r"\r", "\r").replace(r"\n", "\n") for r in DEEPSEEK_V3_REGEXES]
    assert raw != list(DEEPSEEK_V3_REGEXES)
    assert pre_tokenizer_name(sequence(*(split(r) for r in raw), BYTE_LEVEL)) == "deepseek-v3"


@pytest.mark.parametrize(
    "tokenizer",
    [
        sequence(split(QWEN2_REGEX.replace(r"\p{N}", r"\p{N}{1,2}")), BYTE_LEVEL),  # edited digits
        sequence(split(QWEN2_REGEX), {"type": "Digits", "individual_digits": True}, BYTE_LEVEL),
        sequence({**split(GPT2_REGEX), "behavior": "Removed"}, BYTE_LEVEL),
        sequence(BYTE_LEVEL),  # no split at all
    ],
)
def test_patterns_llama_cpp_does_not_implement_are_refused(tokenizer):
    with pytest.raises(UnsupportedArchitecture, match="llama.cpp"):
        pre_tokenizer_name(tokenizer)
