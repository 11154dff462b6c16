"""Reading a model's JSON files (config.json, tokenizer.json, ...), which come from strangers.

One place for what every reader must survive: bytes that are not UTF-8, text that is not
JSON, and JSON nested deeper than Python's decoder recurses (RecursionError) all become
BadModelFile with the file's name, never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

from converters.core.errors import BadModelFile


def read_model_json(path: Path, hint: str = "Re-download the model."):
    """The parsed JSON value of `path` (any JSON type; callers check the shape they need)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadModelFile(f"{path} is not valid JSON ({e}).", hint) from e
