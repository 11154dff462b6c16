"""A tokenizer's pre-tokenizer -> the name llama.cpp knows it by (`tokenizer.ggml.pre`).

llama.cpp does not read the pre-tokenizer's regexes from the file: it recognises the
pre-tokenizer by name and runs its own copy of the regexes (src/llama-vocab.cpp,
`llm_tokenizer_bpe`). llama.cpp's converter picks that name by hashing the token ids of a
test string, which fails for every vocabulary nobody has hashed yet. Itamae decides it from
the tokenizer's own definition instead: the steps of its pre-tokenizer, each as the regex it
splits with, compared with the patterns llama.cpp implements (table below; each pattern is
spelled as the publisher's tokenizer.json spells it). A pattern llama.cpp does not implement
is refused, because a guessed pre-tokenizer silently tokenizes differently.
"""

from __future__ import annotations

import json

from converters.core.errors import UnsupportedArchitecture

# GPT-2's regex, which the ByteLevel pre-tokenizer applies itself when `use_regex` is true.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# o200k (GPT-4o's, gpt-oss's o200k_harmony): llama.cpp's "gpt-4o" pre-tokenizer
GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Kimi-K2's `pat_str` (tokenization_kimi.py; tiktoken's regex crate and Oniguruma both read
# `&&` as class intersection): GPT-4o's with Han characters runs of their own
KIMI_K2_REGEX = "|".join(
    [
        r"[\p{Han}]+",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
        r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
        r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
DEEPSEEK_V3_REGEXES = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
HAN_HANGUL = r"[一-龥ࠀ-一가-퟿]+"  # DeepSeek-LLM/Coder: CJK, U+0800..U+4E00, Hangul
# DeepSeek-LLM's letters. Six of its characters (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126 OHM,
# U+212A KELVIN) have NFC equivalents that editors and copy-paste substitute silently (the
# range "Ὗ-ώ" then runs backwards, which Oniguruma refuses); they are written as escapes.
DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚ"
    "Ḁ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ"
    "\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻"
    "𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
)
DEEPSEEK_LLM_REGEXES = (
    r"[\r\n]",
    DEEPSEEK_LLM_LETTERS,
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    HAN_HANGUL,
    r"\p{N}+",
)

# A `Digits` step with individual_digits: every digit (Unicode numeric, as Rust's
# char::is_numeric, which takes ½ too) is a piece of its own; without: runs of them.
DIGIT_REGEX = r"\p{N}"
DIGITS_REGEX = r"\p{N}+"
# A `Punctuation` step (contiguous): runs of what Rust's tokenizers calls punctuation, ASCII
# punctuation or Unicode P*; the ASCII ones outside P* ($+<=>^`|~) are listed, as llama.cpp does.
PUNCTUATION_REGEX = r"[\p{P}\$\+<=>\^~\|`]+"

DEEPSEEK_CODER_REGEXES = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", HAN_HANGUL, DIGIT_REGEX)
# tiiuae/falcon: punctuation runs, GPT-2's regex, digit runs, then threes of ASCII digits
FALCON_REGEXES = (PUNCTUATION_REGEX, GPT2_REGEX, DIGITS_REGEX, "[0-9][0-9][0-9]")

# The split regexes of a tokenizer (in order) -> the name llama.cpp knows them by.
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    (QWEN2_REGEX,): "qwen2",  # Qwen1.5/2/2.5/3, Qwen-MoE, Qwen3-MoE, DeepSeek-R1-Distill-Qwen
    (LLAMA3_REGEX,): "llama-bpe",  # Llama 3.x
    (
        GPT2_REGEX,
    ): "gpt-2",  # GPT-2 and GPT-NeoX vocabularies (OLMoE; llama.cpp's "olmo", "mpt" are the same)
    (QWEN35_REGEX,): "qwen35",  # Qwen3.5
    (GPT4O_REGEX,): "gpt-4o",  # gpt-oss (o200k_harmony), GPT-4o
    (KIMI_K2_REGEX,): "kimi-k2",  # Kimi-K2, K2.5 (a tiktoken vocabulary)
    DEEPSEEK_V3_REGEXES: "deepseek-v3",  # DeepSeek-V3, V3.1, R1
    DEEPSEEK_LLM_REGEXES: "deepseek-llm",  # DeepSeek-LLM, DeepSeek-V2, V2.5
    DEEPSEEK_CODER_REGEXES: "deepseek-coder",  # DeepSeek-Coder (V1)
    FALCON_REGEXES: "falcon",  # Falcon
    # StarCoder, SmolLM, Refact, Command-R (Digits then ByteLevel; llama.cpp runs the same
    # regexes for "refact" and "command-r")
    (DIGIT_REGEX, GPT2_REGEX): "starcoder",
}


def canonical_regex(pattern: str) -> str:
    """Regex text with raw control characters spelled as escapes (`\\n` and a newline match
    the same), so that equivalent spellings compare equal."""
    return pattern.replace("\r", r"\r").replace("\n", r"\n").replace("\t", r"\t")


CANONICAL_PRE = {
    tuple(canonical_regex(p) for p in key): name for key, name in PRE_TOKENIZERS.items()
}
ADVICE = "Convert a model whose tokenizer llama.cpp knows (Qwen, Llama 3, DeepSeek, GPT-2)."


def split_regexes(pre_tokenizer: dict | None) -> tuple[str, ...]:
    """The regexes a tokenizer.json pre-tokenizer splits text with, in order."""
    if not pre_tokenizer:
        return ()
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else None
    regexes: list[str] = []
    for step in steps if steps is not None else [pre_tokenizer]:
        regex = _step_regex(step)
        if regex:
            regexes.append(regex)
    return tuple(regexes)


def _step_regex(step: dict) -> str:
    kind = step.get("type")
    if kind == "Split":
        pattern = step.get("pattern", {})
        if "Regex" not in pattern or step.get("behavior", "Isolated") != "Isolated":
            raise UnsupportedArchitecture(
                f"The tokenizer splits text with {json.dumps(step)[:200]}, which llama.cpp "
                "does not implement.",
                ADVICE,
            )
        return pattern["Regex"]
    if kind == "Digits":
        return DIGIT_REGEX if step.get("individual_digits") else DIGITS_REGEX
    if kind == "Punctuation" and step.get("behavior", "Isolated") == "Contiguous":
        return PUNCTUATION_REGEX
    if kind == "ByteLevel":
        return GPT2_REGEX if step.get("use_regex", True) else ""
    raise UnsupportedArchitecture(
        f"The tokenizer's pre-tokenizer step {json.dumps(step)[:120]} is not one llama.cpp "
        "implements.",
        ADVICE,
    )


def pre_tokenizer_name(tokenizer: dict) -> str:
    regexes = split_regexes(tokenizer.get("pre_tokenizer"))
    name = CANONICAL_PRE.get(tuple(canonical_regex(r) for r in regexes))
    if name is None:
        shown = " then ".join(repr(r[:80]) for r in regexes) or "(no split pattern)"
        raise UnsupportedArchitecture(
            f"The tokenizer's split pattern {shown} is not one llama.cpp implements, so llama.cpp "
            "would tokenize text differently from the model's own tokenizer.",
            "Known patterns: " + ", ".join(sorted(set(PRE_TOKENIZERS.values()))) + ".",
        )
    return name
