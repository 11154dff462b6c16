"""Tokenizer parity on llama.cpp's own vocabulary test set, for every vocabulary it ships one for.

llama.cpp keeps, beside each `models/ggml-vocab-<name>.gguf`, test texts (`.inp`) and the ids
the publisher's Hugging Face tokenizer gives them (`.out`). Each vocabulary is rebuilt as the
publisher's HF tokenizer folder (tests/fixtures/llamacpp_vocabs.py), put in a tiny Llama
checkpoint, and written as a vocab-only GGUF twice: by Itamae's tokenizer writer and by
llama.cpp's own converter (`convert_hf_to_gguf.py --vocab-only`). llama.cpp then tokenizes the
texts from both files (llama-cpp-python, vocab only, no BOS, specials as text: as
tests/test-tokenizer-0 does), and each file scores the share of texts whose ids equal the
expected ones. Itamae must score at least what llama.cpp's own conversion scores.

llama.cpp's converter recognises a tokenizer only by hashing its ids on a test string; where it
refuses a folder (mpt: its hash is not recognised) or writes a file llama.cpp then cannot load
(deepseek-coder, deepseek-llm: the converted DeepSeek-Coder file has thirteen added tokens all
spelled U+FFFD, and llama.cpp aborts on the duplicates), Itamae is held to the HF tokenizer's own score on the folder instead (it
cannot do better than the tokenizer it converts). Where they differ, the failing texts are shown.

Every vocabulary goes through the Llama family on both sides, gemma-4's too (llama.cpp's
Llama converter writes it as SentencePiece and scores about 0.02; its Gemma 4 converter,
which needs a Gemma 4 checkpoint, is not run here).

bert-bge is WordPiece (an encoder's vocabulary): neither transformers' GGUF loader nor Itamae
builds WordPiece, and Itamae's refusal says so (checked below, not skipped).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import gguf
import pytest

from converters import archs
from converters.core.errors import UnsupportedArchitecture
from converters.formats.gguf_tokenizer import add_tokenizer
from tests.fixtures.llamacpp_reference import CACHE, llama_cpp_source
from tests.fixtures.llamacpp_vocabs import VOCABS, hf_tokenizer_folder, vocab_cases

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow  # 14 vocabularies, two conversions each (minutes, cached after)

WORDPIECE = ("bert-bge",)
BPE_VOCABS = tuple(v for v in VOCABS if v not in WORDPIECE)
# Text with combining marks (issue 15: a Llama-3 vocabulary tokenized Vietnamese differently
# from its HF tokenizer after conversion), in NFD and NFC, checked beside llama.cpp's own texts.
COMBINING = [
    "Tiếng Việt có dấu: người, nước, được, trường học.",
    "Tiếng Việt",
    "Xin chào thế giới! Hôm nay trời đẹp quá.",
    "café naïve Ångström — crème brûlée",
]
EXTRA_TEXTS = [unicodedata.normalize(form, t) for t in COMBINING for form in ("NFD", "NFC")]


def _checkpoint(name: str, hf_checkpoint) -> Path:
    """A tiny Llama checkpoint carrying the rebuilt tokenizer (vocab-only conversions read its
    config and tokenizer, not its weights)."""
    folder = hf_tokenizer_folder(name)
    n_vocab = _n_vocab(folder)
    dest = CACHE / "vocab-parity" / folder.parent.name / name / "checkpoint"
    if (dest / "config.json").is_file():
        return dest
    src = hf_checkpoint("llama")
    tmp = dest.with_name(".checkpoint.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(src / "model.safetensors", tmp / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = n_vocab
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for f in folder.iterdir():
        shutil.copy(f, tmp / f.name)
    tmp.rename(dest)
    return dest


def _n_vocab(folder: Path) -> int:
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    ids = [int(i) for i in tokenizer["model"]["vocab"].values()]
    ids += [int(a["id"]) for a in tokenizer.get("added_tokens", [])]
    return max(ids) + 1


def itamae_vocab_gguf(checkpoint: Path) -> Path:
    """Itamae's tokenizer keys, under the llama family's, as a vocab-only GGUF."""
    dest = checkpoint.parent / "itamae-vocab.gguf"
    spec = archs.find("llama")
    config = json.loads((checkpoint / "config.json").read_text())
    writer = gguf.GGUFWriter(str(dest), spec.arch_name)
    add_tokenizer(
        writer, checkpoint, config["vocab_size"], spec.special_tokens, spec.tokenizer_model,
        spec.visible_tokens, spec.chat_template,
    )  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def llamacpp_vocab_gguf(checkpoint: Path) -> tuple[Path | None, str]:
    """llama.cpp's converter's vocab-only GGUF of the checkpoint, or None and why it refused
    (cached, refusal included)."""
    dest = checkpoint.parent / "llamacpp-vocab.gguf"
    refusal = checkpoint.parent / "llamacpp-refusal.txt"
    if dest.is_file():
        return dest, ""
    if refusal.is_file():
        return None, refusal.read_text()
    script = llama_cpp_source() / "convert_hf_to_gguf.py"
    partial = dest.with_name(".partial.gguf")
    cmd = [sys.executable, str(script), str(checkpoint), "--vocab-only", "--outfile", str(partial)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        why = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
        refusal.write_text((why[-1] if why else done.stderr[-400:]).strip())
        return None, refusal.read_text()
    partial.rename(dest)
    return dest, ""


TOKENIZE = """
import json, sys
import llama_cpp
path, texts = sys.argv[1], json.loads(sys.stdin.read())
llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
print(json.dumps([llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts]))
"""


def llama_cpp_ids(path: Path, texts: list[str]) -> tuple[list[list[int]] | None, str]:
    """llama.cpp's ids for the texts from the GGUF, in a subprocess: llama.cpp aborts the
    process on a vocabulary it cannot load (a GGML_ASSERT), which is a result here."""
    cmd = [sys.executable, "-c", TOKENIZE, str(path)]
    done = subprocess.run(cmd, input=json.dumps(texts), capture_output=True, text=True)
    if done.returncode != 0:
        asserts = [line for line in done.stderr.splitlines() if "GGML_ASSERT" in line]
        # llama-cpp-python silences llama.cpp's own stderr while loading: the status may be all
        return None, (asserts or [f"exit status {done.returncode}"])[0].strip()
    return json.loads(done.stdout), ""


def score(got: list[list[int]], want: list[list[int]]) -> float:
    return sum(g == w for g, w in zip(got, want, strict=True)) / len(want)


def hf_ids(folder: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def _shown(texts, got, want) -> list[str]:
    return [f"{t!r}: {g} != {w}" for t, g, w in zip(texts, got, want, strict=True) if g != w][:5]


@pytest.fixture(scope="session")
def parity(hf_checkpoint):
    """vocabulary -> (texts, expected, Itamae's ids, llama.cpp's ids or None, its refusal,
    the HF tokenizer's ids)."""
    results = {}

    def measure(name: str):
        if name not in results:
            checkpoint = _checkpoint(name, hf_checkpoint)
            cases = vocab_cases(name)
            texts, want = [t for t, _ in cases], [ids for _, ids in cases]
            ours, failure = llama_cpp_ids(itamae_vocab_gguf(checkpoint), texts + EXTRA_TEXTS)
            assert ours is not None, f"llama.cpp cannot load Itamae's GGUF: {failure}"
            theirs = None
            theirs_path, refusal = llamacpp_vocab_gguf(checkpoint)
            if theirs_path is not None:
                theirs, failure = llama_cpp_ids(theirs_path, texts + EXTRA_TEXTS)
                refusal = (
                    failure and f"llama.cpp cannot load the file its converter wrote: {failure}"
                )
            hf = hf_ids(checkpoint, texts + EXTRA_TEXTS)
            results[name] = (texts, want, ours, theirs, refusal, hf)
        return results[name]

    return measure


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_itamae_scores_at_least_llama_cpps_own_conversion(parity, name):
    texts, want, ours, theirs, refusal, hf = parity(name)
    n = len(want)
    our_score = score(ours[:n], want)
    print(f"{name}: Itamae {our_score:.3f}", end=" ")
    if theirs is not None:
        their_score = score(theirs[:n], want)
        print(f"llama.cpp's converter {their_score:.3f}")
        assert our_score >= their_score, _shown(texts, ours[:n], want)
    else:
        # llama.cpp's converter refused the folder: held to the HF tokenizer's own score
        hf_score = score(hf[:n], want)
        print(f"(llama.cpp's conversion: {refusal[:120]}) HF {hf_score:.3f}")
        assert our_score >= hf_score, _shown(texts, ours[:n], want)


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_combining_marks_tokenize_as_the_hf_tokenizer(parity, name):
    """Text with combining marks (issue 15's Vietnamese). In NFC, Itamae's file gives the HF
    tokenizer's ids. In NFD, a tokenizer that normalizes to NFC (Qwen2, GPT-NeoX, Cohere)
    cannot be followed by llama.cpp, which has no normalizer: there Itamae's file agrees
    with the HF tokenizer at least as often as llama.cpp's own conversion does."""
    texts, want, ours, theirs, refusal, hf = parity(name)
    n = len(want)
    nfc = [i for i, t in enumerate(EXTRA_TEXTS) if unicodedata.is_normalized("NFC", t)]
    got, ref = [ours[n + i] for i in nfc], [hf[n + i] for i in nfc]
    assert got == ref, _shown([EXTRA_TEXTS[i] for i in nfc], got, ref)
    our_score = score(ours[n:], hf[n:])
    if theirs is not None:
        assert our_score >= score(theirs[n:], hf[n:]), _shown(EXTRA_TEXTS, ours[n:], hf[n:])
    if name == "llama-bpe":  # the vocabulary the issue saw it on: every form agrees
        assert ours[n:] == hf[n:], _shown(EXTRA_TEXTS, ours[n:], hf[n:])


def test_wordpiece_vocabularies_are_refused_with_advice(tmp_path):
    """bert-bge (WordPiece) is not a tokenizer Itamae writes: the refusal names what it writes
    and what to use instead. The folder is WordPiece as BERT publishes it, built by
    transformers' own BertTokenizer converter from the GGUF's vocabulary."""
    from transformers import BertTokenizerFast

    reader = gguf.GGUFReader(llama_cpp_source() / "models" / "ggml-vocab-bert-bge.gguf")
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    writer = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "llama")
    with pytest.raises(UnsupportedArchitecture, match="WordPiece") as refused:
        add_tokenizer(writer, tmp_path, len(tokens))
    assert "convert_hf_to_gguf.py" in refused.value.hint
