"""Streaming text out of generated tokens: characters never split, stop strings cut.

Both local backends hand their tokens to one `TextAssembler`; only how a token becomes text
differs. llama.cpp detokenizes each token to bytes (`llama_token_to_piece`), and byte-level
BPE splits one character over several tokens (a Japanese character is three UTF-8 bytes,
often two tokens), so those bytes are joined by an incremental UTF-8 decoder (`Utf8Stream`).
A Hugging Face tokenizer's decoders (byte-level, SentencePiece's metaspace, byte fallback)
read neighbouring tokens, so ids go through `tokenizers.decoders.DecodeStream`
(`TokenizerStream`), which decodes only the last few ids at each step instead of the whole
reply again (the prefix/read-offset scheme of text-generation-inference's streaming).

Stop strings follow OpenAI's `stop`: the text ends before the first occurrence and the
stop string itself is not returned; text that might be the start of a stop string is held
back until the next piece decides it.
"""

from __future__ import annotations

import codecs
from typing import Protocol

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from converters.core.errors import ItamaeError


class PieceDecoder(Protocol):
    """One token's piece in, the text it completes out ("" while a character is split)."""

    def push(self, piece) -> str: ...

    def flush(self) -> str: ...


class Utf8Stream:
    """Bytes in, complete characters out; a split character waits for its last byte."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class TokenizerStream:
    """Token ids in, text out, as `tokenizer.decode(ids, skip_special_tokens=True)` would
    give it, but a few ids at a time (tokenizers' DecodeStream)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer, self._skip = tokenizer, skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._last: list[int] = []  # the id that gave text last: context for the tail
        self._pending: list[int] = []  # ids since, which gave no text yet

    def push(self, token_id: int) -> str:
        try:
            text = self._stream.step(self._tokenizer, token_id)
        except Exception as e:  # tokenizers raises a plain Exception (a decoder broke prefix)
            raise ItamaeError(
                f"The tokenizer could not decode the reply incrementally ({e}).",
                "Run a GGUF of this model in the llama.cpp engine, which decodes token bytes.",
            ) from e
        if text is None:
            self._pending.append(token_id)
            return ""
        self._last, self._pending = [token_id], []
        return text

    def flush(self) -> str:
        """What ids that never completed a character decode to (U+FFFD where bytes are
        missing), read after the last id that gave text, so a leading space stays right."""
        if not self._pending:
            return ""
        before = self._decode(self._last)
        after = self._decode(self._last + self._pending)
        self._pending = []
        return after[len(before) :] if after.startswith(before) else after

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)


class StopStrings:
    """Cuts the stream at the first stop string; holds back a possible partial match."""

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self._pending = ""
        self.matched: str | None = None  # the stop string the stream was cut at

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        self._pending += text
        hits = [(i, s) for s in self.stops if (i := self._pending.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits)
            out, self._pending = self._pending[:at], ""
            return out, True
        hold = self._partial_match_length()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _partial_match_length(self) -> int:
        """Longest tail of the pending text that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:k]):
                    longest = k
                    break
        return longest


class TextAssembler:
    """Token pieces in, the text a person should see out: characters whole, cut at stop
    strings. Pieces are bytes (llama.cpp) unless `pieces` decodes another kind (ids)."""

    def __init__(self, stops: list[str] | None, pieces: PieceDecoder | None = None):
        self._pieces = pieces if pieces is not None else Utf8Stream()
        self._stops = StopStrings(stops)
        self.stopped = False  # a stop string was reached: nothing more is shown

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the text (None if none did)."""
        return self._stops.matched

    def push(self, piece) -> str:
        if self.stopped:
            return ""
        text, self.stopped = self._stops.push(self._pieces.push(piece))
        return text

    def finish(self) -> str:
        """What was held back (a partial character, a possible stop-string start)."""
        if self.stopped:
            return ""
        text, self.stopped = self._stops.push(self._pieces.flush())
        return text if self.stopped else text + self._stops.flush()
