"""Everything that turns tokens into tokens: backends behind one small interface."""

from .loader import load
from .types import (
    Backend,
    FinalEvent,
    GenerationRequest,
    Message,
    SamplingParams,
    Stats,
    TokenEvent,
)

__all__ = [
    "Backend",
    "FinalEvent",
    "GenerationRequest",
    "Message",
    "SamplingParams",
    "Stats",
    "TokenEvent",
    "load",
]
