"""JSON schemas as llama.cpp grammars (GBNF), through the converter llama-cpp-python ships
(llama_cpp.llama_grammar.json_schema_to_gbnf, a port of llama.cpp's
common/json-schema-to-grammar).

That converter enforces a subset of JSON Schema and skips the rest without a word, so
the schema is checked first: a keyword it would skip is refused, named by its place in
the schema, instead of being half-enforced. Annotations (title, description, ...) are
allowed; they constrain nothing.
"""

from __future__ import annotations

import json

from llama_cpp.llama_grammar import json_schema_to_gbnf

from engine.constrained import UnsupportedSchema
from engine.types import OutputConstraint

ENFORCED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "pattern",
    "format",
    "minLength",
    "maxLength",
}
ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "default", "examples"}
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def check_schema(schema, where: str = "#") -> None:
    """Raise UnsupportedSchema naming the first keyword the grammar would not enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"The JSON schema at {where} is not an object.", "")
    for key, value in schema.items():
        if key not in ENFORCED and key not in ANNOTATIONS:
            raise UnsupportedSchema(
                f"The JSON schema keyword {key!r} at {where} cannot be enforced by the "
                "llama.cpp engine's grammar.",
                f"Remove {key!r}, or describe the limit in the prompt instead.",
            )
        if key in _SUBSCHEMA_MAPS:
            for name, sub in value.items():
                check_schema(sub, f"{where}/{key}/{name}")
        elif key in _SUBSCHEMA_LISTS:
            for i, sub in enumerate(value):
                check_schema(sub, f"{where}/{key}/{i}")
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            check_schema(value, f"{where}/{key}")


def grammar_for(constraint: OutputConstraint) -> str:
    schema = constraint.json_schema or {"type": "object"}
    check_schema(schema)
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, KeyError, ValueError, TypeError) as e:
        raise UnsupportedSchema(
            f"The JSON schema cannot be turned into a llama.cpp grammar: {e}", ""
        ) from e
