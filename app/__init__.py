"""The person-facing side of Itamae: launcher, UI, API, conversation store."""

__version__ = "0.1.0"
