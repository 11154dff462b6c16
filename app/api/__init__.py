"""The HTTP surfaces over the one shared model: `openai.py` (the OpenAI-compatible
/v1 routes), `schema.py` (request bodies validated into engine requests) and
`stream.py` (one request's run, streamed as server-sent events or answered whole)."""
