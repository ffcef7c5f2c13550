"""JSON Schemas from prompts (`response_format.json_schema`, a tool's `parameters`), compiled
once and checked fast. jsonschema-rs: ~0.2 µs to check a small object and ~9 µs to compile its
schema, against ~1.2 µs / 1.2 ms (fastjsonschema) and ~29 µs (jsonschema), measured side by
side (docs/BENCHMARKS.md). A schema never fetches anything: a `$ref` outside it is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import jsonschema_rs
import msgspec

__all__ = ["MAX_SCHEMAS", "instance_problem", "schema_problem"]

MAX_SCHEMAS = 512
"""Compiled validators kept (least recently used out): prompts mostly repeat a few schemas."""

_canonical = msgspec.json.Encoder(order="sorted").encode
_validators: OrderedDict[bytes, jsonschema_rs.Validator] = OrderedDict()


def _no_retrieval(uri: str) -> Any:
    raise ValueError(f"the schema refers to {uri[:200]!r}: only references inside it are read")


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The compiled validator of `schema`; `jsonschema_rs.ValidationError` (or another
    ValueError) when it is no valid JSON Schema."""
    key = _canonical(schema)
    found = _validators.get(key)
    if found is not None:
        _validators.move_to_end(key)
        return found
    made = jsonschema_rs.validator_for(schema, retriever=_no_retrieval)
    _validators[key] = made
    if len(_validators) > MAX_SCHEMAS:
        _validators.popitem(last=False)
    return made


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a JSON Schema a validator can use, or None."""
    try:
        _validator(schema)
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        return _first_line(str(exc))
    return None


def instance_problem(schema: dict[str, Any], value: Any) -> str | None:
    """Why `value` is not valid for `schema` (the first error, with where), or None."""
    validator = _validator(schema)
    if validator.is_valid(value):
        return None
    for error in validator.iter_errors(value):
        where = "".join(f"[{p!r}]" for p in error.instance_path) or "the value"
        return f"{where}: {_first_line(error.message)}"
    return "not valid for the schema"  # pragma: no cover - is_valid said so


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0][:300]
