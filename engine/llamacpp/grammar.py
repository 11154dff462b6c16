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

from llama_cpp.llama_grammar import SchemaConverter, json_schema_to_gbnf

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


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # GBNF's string escapes are JSON's


def _sequences_gbnf(sequences: list, token_id) -> str:
    """GBNF accepting one of `sequences` (engine.types.OutputConstraint): the JSON parts
    through llama-cpp-python's SchemaConverter (one converter, so shared rules such as
    `space` are written once), special tokens as <[id]> (grammars/README.md, "Tokens")."""
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    rules = []
    for i, sequence in enumerate(sequences):
        items = []
        for j, (kind, value) in enumerate(sequence):
            if kind == "text":
                items.append(_literal(value))
            elif kind == "token":
                tid = token_id(value)
                items.append(f"<[{tid}]>" if tid is not None else _literal(value))
            elif kind == "json":
                check_schema(value)
                schema = converter.resolve_refs(value, "stdin")
                items.append(converter.visit(schema, f"json-{i}-{j}"))
            elif kind == "oneof":
                items.append("(" + " | ".join(_literal(v) for v in value) + ")")
            else:  # raw: a bare XML value
                items.append(f"[^<]{{0,{value}}}" if value else "[^<]*")
        rules.append(f"seq-{i} ::= " + " ".join(items))
    root = "root ::= " + " | ".join(f"seq-{i}" for i in range(len(sequences)))
    return "\n".join([root, *rules, converter.format_grammar()])


def grammar_for(constraint: OutputConstraint, token_id=lambda text: None) -> str:
    """GBNF for a constraint. `token_id(text)` is a special token's id, or None."""
    schema = constraint.json_schema or {"type": "object"}
    try:
        if constraint.sequences:
            return _sequences_gbnf(constraint.sequences, token_id)
        check_schema(schema)
        return json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, KeyError, ValueError, TypeError) as e:
        raise UnsupportedSchema(
            f"The JSON schema cannot be turned into a llama.cpp grammar: {e}", ""
        ) from e
