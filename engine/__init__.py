"""Everything that turns tokens into tokens: backends behind one small interface."""

from .loader import Detected, detect, load
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
    "Detected",
    "FinalEvent",
    "GenerationRequest",
    "Message",
    "SamplingParams",
    "Stats",
    "TokenEvent",
    "detect",
    "load",
]
