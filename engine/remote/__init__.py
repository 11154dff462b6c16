"""The remote backend: any OpenAI-compatible server (engine/remote/backend.py)."""
