"""Itamae's GGUF against the file llama.cpp's own converter writes from the same checkpoint,
and Itamae's tokenizer keys against llama.cpp's own tokenizer and vocabulary files.

llama.cpp's converter needs a vocabulary it recognises, so each fixture gets GPT-2's real
vocabulary first (tests/fixtures/llamacpp_reference.py). Both files then run in llama.cpp
on the same tokens and must give the same logits.
"""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader

from converters.conversion.convert import convert
from converters.formats.gguf_pre_tokenizer import pre_tokenizer_name
from tests.convert_helpers import llama_cpp_logits, relative_error
from tests.fixtures.llamacpp_reference import (
    reference_pair,
    vocabulary_tokenizer,
    with_recognized_vocabulary,
)

llama_cpp = pytest.importorskip("llama_cpp")

# Where llama.cpp's converter and the model disagree, the checkpoint is made to agree with
# llama.cpp's assumption so that the files can be compared at all:
#   olmoe        llama.cpp writes a fixed rms_norm_eps of 1e-5 (the published OLMoE's)
#   deepseek_v2  (left out) llama.cpp's file omits q_lora_rank for a model without q LoRA and
#                then loads only at V2-Lite's layer count, and it applies V3's group rule to
#                V2's group_limited_greedy routing; Itamae's file is checked against
#                transformers in test_convert_gguf instead.
#   glm4_moe_lite  llama.cpp's converter writes the gating function only when config.json
#                names scoring_func (transformers does not save it) and llama.cpp then
#                routes with softmax; Itamae always writes sigmoid (test_convert_gguf checks
#                its file on the fixture, which names none, against transformers)
# GLM's converter looks these up in the vocabulary (conversion/base.py `_set_vocab_glm`)
GLM_SPECIALS = ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
PARITY = {
    "mixtral": {},
    "qwen2_moe": {},
    "qwen3_moe": {},
    "olmoe": {"rms_norm_eps": 1e-5},
    "deepseek_v3": {},
    "llama": {},
    "glm4_moe": {"added_tokens": GLM_SPECIALS},
    "minimax_m2": {},
    "minimax_m2_fp8": {},
    "glm4_moe_lite": {"added_tokens": GLM_SPECIALS, "scoring_func": "sigmoid"},
}
# Families whose GGUF must carry llama.cpp's own metadata keys, not just its tensor names
# (deepseek_v3: DeepSeek-V3 / R1 / V3.1)
SAME_KEYS = ("glm4_moe", "minimax_m2", "minimax_m2_fp8", "glm4_moe_lite", "deepseek_v3")
# Keys only Itamae writes, and keys about the source file llama.cpp's converter adds
OWN_KEYS = {"itamae.openness", "itamae.quant_recipe", "itamae.quantize.fallbacks"}
PROMPT = [50256] + list(range(40, 71))  # GPT-2's <|endoftext|> then 31 tokens


@pytest.mark.slow  # llama.cpp's converter takes ~25 s per fixture the first time (then cached)
@pytest.mark.parametrize("arch", PARITY)
def test_same_logits_as_llama_cpp_converter(arch, hf_checkpoint, tmp_path):
    folder, theirs = reference_pair(hf_checkpoint(arch), "f32", **PARITY[arch])
    ours = tmp_path / "itamae.gguf"
    convert(folder, ours, "F32")

    ours_reader, theirs_reader = GGUFReader(ours), GGUFReader(theirs)
    assert {t.name for t in ours_reader.tensors} == {t.name for t in theirs_reader.tensors}
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        assert ours_reader.fields[key].contents() == theirs_reader.fields[key].contents()

    got, want = llama_cpp_logits(ours, PROMPT), llama_cpp_logits(theirs, PROMPT)
    assert relative_error(got, want) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("arch", SAME_KEYS)
def test_same_shapes_and_metadata_keys_as_llama_cpp_converter(arch, hf_checkpoint, tmp_path):
    folder, theirs = reference_pair(hf_checkpoint(arch), "f32", **PARITY[arch])
    ours = tmp_path / "itamae.gguf"
    convert(folder, ours, "F32")
    ours_reader, theirs_reader = GGUFReader(ours), GGUFReader(theirs)
    shapes = {t.name: tuple(t.shape) for t in ours_reader.tensors}
    assert shapes == {t.name: tuple(t.shape) for t in theirs_reader.tensors}
    assert set(ours_reader.fields) - OWN_KEYS == set(theirs_reader.fields)
    prefix = ours_reader.fields["general.architecture"].contents() + "."
    for key, field in theirs_reader.fields.items():
        if key.startswith(prefix) or key.startswith("tokenizer.ggml.") and key.endswith("_id"):
            want, got = field.contents(), ours_reader.fields[key].contents()
            if isinstance(want, str):  # DeepSeek's rope.scaling.type "yarn"
                assert got == want, key
            else:
                assert got == pytest.approx(want, rel=1e-6), key


def test_pre_tokenizer_is_recognised_from_the_split_regex():
    """transformers rebuilds GPT-2's tokenizer.json from llama.cpp's own ggml-vocab-gpt-2.gguf;
    Itamae must name its pre-tokenizer as that file does."""
    folder = vocabulary_tokenizer("gpt-2")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    assert pre_tokenizer_name(tokenizer) == "gpt-2"


def test_bilingual_text_tokenizes_as_the_hf_tokenizer(hf_checkpoint, tmp_path):
    """llama.cpp tokenizes English + Japanese (and specials, digits, whitespace runs) from
    Itamae's GGUF exactly as the HF tokenizer does."""
    from transformers import AutoTokenizer

    from tests.fixtures.tokenizer import CORPUS

    folder = hf_checkpoint("qwen3_moe")
    dest = tmp_path / "vocab.gguf"
    convert(folder, dest, "Q8_0")
    hf = AutoTokenizer.from_pretrained(folder)
    llm = llama_cpp.Llama(str(dest), vocab_only=True, verbose=False)
    texts = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts += [
        "東京は日本の首都です。Tokyo is the capital of Japan, population 13,960,000!",
        "  leading spaces,\ttabs\n\nand newlines\r\n 1234567 3.14159 — “quotes” 🍣🍣",
        "カタカナとひらがな、漢字。It's, we'll, I'd; THE END?!",
    ]
    try:
        for text in texts:
            assert llm.tokenize(text.encode(), add_bos=True) == hf.encode(text), text
        chat = "<|im_start|>user\nこんにちは、お元気ですか?<|im_end|>\n<|im_start|>assistant\n"
        assert llm.tokenize(chat.encode(), add_bos=True, special=True) == hf.encode(chat)
    finally:
        llm.close()


def test_sentencepiece_vocabulary_tokenizes_as_the_hf_tokenizer(hf_checkpoint, tmp_path):
    """Llama's real SentencePiece vocabulary (byte fallback, Metaspace; as Mistral/Mixtral
    publish theirs) written as llama.cpp's "llama" tokenizer: same ids as the HF tokenizer
    on bilingual text, Japanese falling back to bytes included."""
    from transformers import AutoTokenizer

    from tests.fixtures.tokenizer import CORPUS

    folder = with_recognized_vocabulary(hf_checkpoint("mixtral"), tmp_path / "spm", "llama-spm")
    dest = tmp_path / "spm.gguf"
    convert(folder, dest, "Q8_0")
    fields = GGUFReader(dest).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert "tokenizer.ggml.merges" not in fields
    hf = AutoTokenizer.from_pretrained(folder)
    llm = llama_cpp.Llama(str(dest), vocab_only=True, verbose=False)
    texts = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts += ["東京は日本の首都です。Tokyo has 13,960,000 people! 🍣", "It's 3.14159, isn't it?"]
    try:
        for text in texts:
            assert llm.tokenize(text.encode(), add_bos=True) == hf.encode(text), text
    finally:
        llm.close()
