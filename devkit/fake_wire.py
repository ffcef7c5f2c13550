"""The OpenAI chat-completions wire format as the fake provider reads and writes it."""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

__all__ = [
    "ChatRequest",
    "Completion",
    "OutChoice",
    "OutFunction",
    "OutMessage",
    "OutToolCall",
    "OutUsage",
    "chunks_of",
    "decode_any",
    "decode_request",
    "encode",
    "example_for",
    "text_of",
]


class InMessage(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None
    tool_call_id: str | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[InMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: Any = None
    stream: bool = False
    stream_options: Any = None

    @property
    def include_usage(self) -> bool:
        """The stream is to end with a usage chunk (`stream_options.include_usage`)."""
        options = self.stream_options
        return isinstance(options, dict) and options.get("include_usage") is True


class OutFunction(msgspec.Struct):
    name: str
    arguments: str


class OutToolCall(msgspec.Struct):
    id: str
    type: str
    function: OutFunction


class OutMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[OutToolCall] | None = None


class OutChoice(msgspec.Struct):
    index: int
    message: OutMessage
    finish_reason: str


class OutUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[OutChoice]
    usage: OutUsage


encode = msgspec.json.Encoder().encode
decode_request = msgspec.json.Decoder(ChatRequest).decode
decode_any = msgspec.json.Decoder().decode


_WORD = re.compile(r"\s*\S+|\s+$")
_ARGUMENT_PIECE = 8  # characters of a tool call's arguments per chunk


def chunks_of(answer: Completion, include_usage: bool) -> list[dict[str, Any]]:
    """A whole answer as OpenAI streams it (the `chat.completion.chunk` objects, in order): the
    role first, then one chunk per word of the text (each word with the spaces before it, so
    the pieces joined are the text), each tool call's id and name then pieces of its
    arguments, the finish reason, and the usage chunk (`choices` empty) when asked for."""
    choice = answer.choices[0]
    message = choice.message
    head = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created}
    head["model"] = answer.model
    usage: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return {**head, "choices": choices, **usage}

    out = [chunk({"role": "assistant", "content": "" if message.tool_calls is None else None})]
    out.extend(chunk({"content": word}) for word in _WORD.findall(message.content or ""))
    for index, call in enumerate(message.tool_calls or ()):
        function = {"name": call.function.name, "arguments": ""}
        first = {"index": index, "id": call.id, "type": "function", "function": function}
        out.append(chunk({"tool_calls": [first]}))
        args = call.function.arguments
        for at in range(0, len(args), _ARGUMENT_PIECE):
            piece = {"index": index, "function": {"arguments": args[at : at + _ARGUMENT_PIECE]}}
            out.append(chunk({"tool_calls": [piece]}))
    out.append(chunk({}, choice.finish_reason))
    if include_usage:
        out.append({**head, "choices": [], "usage": msgspec.to_builtins(answer.usage)})
    return out


def text_of(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return " ".join(p for p in parts if isinstance(p, str))


_MAX_DEPTH = 32  # a recursive $ref ends here (as null) instead of recursing forever


def example_for(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A minimal JSON value valid for the JSON Schema `schema`: an object with its required
    properties, an enum's first value, "x" for a string, an integer or number's minimum (or 0),
    true, empty arrays (or `minItems` examples), nested objects alike; `$ref`s to `#/...` are
    followed, `anyOf`/`oneOf` take their first branch and `allOf` is merged."""
    if root is None:
        root = schema
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None if depth > _MAX_DEPTH else {}
    schema = _merged(_resolved(schema, root, depth), root, depth)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return example_for(options[0], root, depth + 1)
    build = _BUILDERS.get(_type_of(schema), _object)
    return build(schema, root, depth)


def _resolved(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    ref = schema.get("$ref")
    while isinstance(ref, str) and ref.startswith("#") and depth <= _MAX_DEPTH:
        found: Any = root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            found = found.get(part) if isinstance(found, dict) else None
        if not isinstance(found, dict):
            return {}
        schema = {**found, **{k: v for k, v in schema.items() if k != "$ref"}}
        ref = found.get("$ref")
        depth += 1
    return schema


def _merged(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    """`schema` with its `allOf` branches folded in (properties and required united)."""
    branches = schema.get("allOf")
    if not isinstance(branches, list):
        return schema
    out = {k: v for k, v in schema.items() if k != "allOf"}
    for branch in branches:
        if not isinstance(branch, dict):
            continue
        part = _merged(_resolved(branch, root, depth + 1), root, depth + 1)
        out["properties"] = {**(out.get("properties") or {}), **(part.get("properties") or {})}
        out["required"] = [*(out.get("required") or []), *(part.get("required") or [])]
        for key, value in part.items():
            out.setdefault(key, value)
    return out


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [k for k in kind if isinstance(k, str) and k != "null"]
        return named[0] if named else "null"
    if isinstance(kind, str):
        return kind
    return "array" if "items" in schema else "object"


def _object(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    return {n: example_for(properties.get(n, {"type": "string"}), root, depth + 1) for n in names}


def _array(schema: dict[str, Any], root: Any, depth: int) -> list[Any]:
    count = schema.get("minItems")
    if not isinstance(count, int) or count <= 0:
        return []
    return [example_for(schema.get("items", {}), root, depth + 1) for _ in range(min(count, 64))]


def _string(schema: dict[str, Any], root: Any, depth: int) -> str:
    least, most = schema.get("minLength"), schema.get("maxLength")
    size = least if isinstance(least, int) and least > 1 else 1
    if isinstance(most, int):
        size = min(size, most)
    return "x" * min(size, 4096)


def _number(schema: dict[str, Any], root: Any, depth: int) -> float | int:
    value: float | int = 0
    least, above = schema.get("minimum"), schema.get("exclusiveMinimum")
    most = schema.get("maximum")
    if isinstance(least, int | float) and not isinstance(least, bool):
        value = least
    elif isinstance(above, int | float) and not isinstance(above, bool):
        value = above + 1
    elif isinstance(most, int | float) and not isinstance(most, bool) and most < 0:
        value = most
    if _type_of(schema) == "integer":
        return math.ceil(value)
    return value


_BUILDERS: dict[str, Any] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _number,
    "number": _number,
    "boolean": lambda schema, root, depth: True,
    "null": lambda schema, root, depth: None,
}
