"""Streaming text assembly: UTF-8 split over tokens, stop strings held back and cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.llamacpp.text import StopStrings, TextAssembler, Utf8Stream


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
