"""Streaming text out of token pieces: UTF-8 reassembly and stop strings.

Byte-level BPE splits one character over several tokens (a Japanese character is three
UTF-8 bytes, often two tokens), so pieces are bytes joined by an incremental decoder.
Stop strings follow OpenAI's `stop`: the text ends before the first occurrence and the
stop string itself is not returned; text that might be the start of a stop string is held
back until the next piece decides it.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Bytes in, complete characters out; a split character waits for its last byte."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopStrings:
    """Cuts the stream at the first stop string; holds back a possible partial match."""

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
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
    """Token pieces in, the text a person should see out: UTF-8 joined, cut at stop strings."""

    def __init__(self, stops: list[str] | None):
        self._utf8, self._stops = Utf8Stream(), StopStrings(stops)
        self.stopped = False  # a stop string was reached: nothing more is shown

    def push(self, piece: bytes) -> str:
        if self.stopped:
            return ""
        text, self.stopped = self._stops.push(self._utf8.push(piece))
        return text

    def finish(self) -> str:
        """What was held back (a partial character, a possible stop-string start)."""
        if self.stopped:
            return ""
        text, self.stopped = self._stops.push(self._utf8.flush())
        return text if self.stopped else text + self._stops.flush()
