"""Errors that reach a person: each says what was wrong and what to do about it.

Every layer (converters, engine, app) raises subclasses of `ItamaeError`; the CLI and
the UI print `str(error)` as is, so the message must stand on its own.
"""

from __future__ import annotations


class ItamaeError(Exception):
    """A problem the person can act on. `hint` says what to do."""

    def __init__(self, problem: str, hint: str = ""):
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem} {hint}".strip())


class UnsupportedArchitecture(ItamaeError):
    pass


class BadModelFile(ItamaeError):
    """A model file is truncated, corrupted or not what its header says."""


class OutputExists(ItamaeError):
    pass


class NotEnoughDisk(ItamaeError):
    pass


class NotEnoughMemory(ItamaeError):
    pass


class ContextTooLong(ItamaeError):
    pass


class Cancelled(ItamaeError):
    pass
