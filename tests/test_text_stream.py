"""Streaming text assembly: UTF-8 split over tokens, stop strings held back and cut.

Bytes (llama.cpp's pieces) through Utf8Stream, and token ids through tokenizers'
DecodeStream (TokenizerStream), checked against the tokenizer's own full decode for two
decoder pipelines: byte-level BPE (the demo model's, Qwen2/GPT-2 style) and SentencePiece
style metaspace + byte fallback (Llama/Mixtral's decoder sequence).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from engine.text_stream import StopStrings, TextAssembler, TokenizerStream, Utf8Stream

DEMO_TOKENIZER = (
    Path(__file__).resolve().parent.parent / "assets" / "demo" / "hf" / "tokenizer.json"
)
# Japanese (kana, kanji), emoji (4 bytes, and a ZWJ sequence), Latin with accents, spaces
ALPHABET = "寿司を食べたい世界🍣👨‍👩abé \n"


def test_a_japanese_character_split_over_tokens_comes_out_whole():
    data = "寿司".encode()
    stream = Utf8Stream()
    assert [stream.push(data[i : i + 1]) for i in range(len(data))] == ["", "", "寿", "", "", "司"]
    assert stream.flush() == ""


def test_an_unfinished_character_is_replaced_at_the_end():
    stream = Utf8Stream()
    assert stream.push("寿".encode()[:2]) == ""
    assert stream.flush() == "\ufffd"


def test_stop_string_across_pieces_is_cut_and_not_shown():
    stops = StopStrings(["<END>"])
    assert stops.push("Hello <") == ("Hello ", False)  # "<" may start the stop string
    assert stops.push("EN") == ("", False)
    assert stops.push("D> more") == ("", True)


def test_held_back_text_is_released_when_it_is_not_a_stop():
    stops = StopStrings(["\n\n"])
    assert stops.push("a\n") == ("a", False)
    assert stops.push("b") == ("\nb", False)
    assert stops.flush() == ""


def test_earliest_of_several_stops_wins():
    assert StopStrings(["zz", "b"]).push("abczz") == ("a", True)


def test_assembler_releases_held_text_when_generation_ends_without_a_stop():
    text = TextAssembler(["\n\nUser:"])
    assert text.push(b"Answer.\n") == "Answer."
    assert text.finish() == "\n"  # the end-of-turn token came before the rest of the stop
    assert not text.stopped


def test_assembler_shows_nothing_after_a_stop():
    text = TextAssembler(["STOP"])
    assert text.push(b"okST") == "ok"
    assert text.push(b"OP then") == "" and text.stopped
    assert text.push(b"more") == "" and text.finish() == ""


@given(
    st.text(alphabet="ab寿\n", max_size=30),
    st.lists(st.integers(1, 6), min_size=1, max_size=40),
    st.sampled_from(["ab", "\n\n", "寿a", "b寿b"]),
)
def test_any_split_gives_the_text_up_to_the_first_stop(text, cuts, stop):
    data, pieces, at = text.encode(), [], 0
    for size in cuts:
        pieces.append(data[at : at + size])
        at += size
    pieces.append(data[at:])
    assembler = TextAssembler([stop])
    shown = "".join(assembler.push(piece) for piece in pieces) + assembler.finish()
    expected = text.split(stop)[0]
    assert shown == expected
    assert assembler.stopped == (stop in text)


def byte_level_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(DEMO_TOKENIZER))


def byte_fallback_tokenizer() -> Tokenizer:
    """Llama's decoder sequence over a vocabulary of a few characters and the 256 byte
    tokens: every other character is spelled as 2-4 `<0xNN>` tokens."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "\u2581abcdeilnoprstu寿司を":
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )  # fmt: skip
    tok.add_special_tokens([AddedToken("</s>", special=True)])
    return tok


TOKENIZERS = {"byte_level": byte_level_tokenizer(), "byte_fallback": byte_fallback_tokenizer()}


def streamed(tokenizer: Tokenizer, ids: list[int], stops: list[str] | None = None):
    text = TextAssembler(stops, TokenizerStream(tokenizer))
    pieces = [text.push(i) for i in ids]
    return pieces, text.finish(), text.stopped


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=ALPHABET, max_size=40))
def test_token_stream_gives_the_full_decode(kind, text):
    tokenizer = TOKENIZERS[kind]
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pieces, tail, stopped = streamed(tokenizer, ids)
    assert "".join(pieces) + tail == tokenizer.decode(ids, skip_special_tokens=True)
    assert not stopped and "\ufffd" not in "".join(pieces)


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_a_character_over_several_tokens_comes_out_whole_once_complete(kind):
    tokenizer = TOKENIZERS[kind]
    ids = tokenizer.encode("食べ🍣", add_special_tokens=False).ids
    assert len(ids) > 3  # the characters are split over tokens in both vocabularies
    pieces, tail, _ = streamed(tokenizer, ids)
    shown = [p for p in pieces if p]
    assert "".join(shown) + tail == "食べ🍣" and all("\ufffd" not in p for p in shown)
    assert pieces[0] == "" or kind == "byte_level"  # 食 is three byte-fallback tokens


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_an_unfinished_character_ends_as_the_full_decode_does(kind):
    tokenizer = TOKENIZERS[kind]
    ids = tokenizer.encode("ab🍣", add_special_tokens=False).ids[:-1]  # 🍣 cut short
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert full.endswith("\ufffd")
    pieces, tail, _ = streamed(tokenizer, ids)
    assert "".join(pieces) == full.rstrip("\ufffd") and "".join(pieces) + tail == full


def test_special_tokens_are_skipped_as_in_the_full_decode():
    tokenizer = TOKENIZERS["byte_fallback"]
    ids = tokenizer.encode("abc</s> を", add_special_tokens=False).ids
    assert tokenizer.token_to_id("</s>") in ids
    pieces, tail, _ = streamed(tokenizer, ids)
    shown = "".join(pieces) + tail
    assert shown == tokenizer.decode(ids, skip_special_tokens=True)
    assert "</s>" not in shown and shown.startswith("abc") and shown.endswith(" を")


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, max_size=40),
    stop=st.sampled_from(["寿司", "🍣 a", "\n\n", "た い", "é"]),
)
def test_stop_strings_split_across_tokens_are_cut(kind, text, stop):
    tokenizer = TOKENIZERS[kind]
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    full = tokenizer.decode(ids, skip_special_tokens=True)
    pieces, tail, stopped = streamed(tokenizer, ids, [stop])
    assert "".join(pieces) + tail == full.split(stop)[0]
    assert stopped == (stop in full)


def test_a_stop_string_over_several_tokens_is_never_shown_in_part():
    tokenizer = TOKENIZERS["byte_fallback"]
    text, stop = "ab 寿司を食べたい", "食べた"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert len(tokenizer.encode(stop, add_special_tokens=False).ids) >= 6  # 9 byte tokens
    pieces, tail, stopped = streamed(tokenizer, ids, [stop])
    assert stopped and "".join(pieces) == "ab 寿司を" and tail == ""
    assert not any("食" in p for p in pieces)


def test_the_stream_names_the_stop_string_it_was_cut_at():
    """The earliest stop in the text wins, whichever is listed first (Anthropic's
    stop_sequence and the API's stop reporting read it)."""
    stream = TextAssembler(["END", "\n\n"])
    text = (
        "".join(stream.push(p.encode()) for p in ["Hi", " there", "\n", "\nEND"]) + stream.finish()
    )
    assert (text, stream.stop_string) == ("Hi there", "\n\n")
    plain = TextAssembler(["END"])
    assert plain.push(b"no stop") + plain.finish() == "no stop" and plain.stop_string is None
