"""The structured fields of a prompt (rich `messages`, `response_format`, `tools`,
`tool_choice`): the rules their types cannot say, and their provider-neutral form.

A rule broken is a `validation_error` completion naming the field, decided on intake, so no
provider is called for a prompt that cannot be answered as asked.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec

from llm_worker.adapters import base

from .jsonschemas import schema_problem

__all__ = [
    "ChatMessage",
    "ResponseFormatIn",
    "ToolChoiceFunction",
    "ToolChoiceIn",
    "ToolDef",
    "convert_messages",
    "convert_structure",
    "structure_problem",
]


class TextPart(msgspec.Struct, frozen=True, tag="text", tag_field="type"):
    text: str


class ImageURL(msgspec.Struct, frozen=True, omit_defaults=True):
    url: Annotated[str, msgspec.Meta(min_length=1)]  # https: or data: (checked: _broken_rule)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(msgspec.Struct, frozen=True, tag="image_url", tag_field="type"):
    image_url: ImageURL


class FunctionCall(msgspec.Struct, frozen=True):
    name: str
    arguments: str | dict[str, Any]  # OpenAI's JSON text, or the object itself


class ToolCallIn(msgspec.Struct, frozen=True):
    """A call an assistant turn made, sent back as history (OpenAI's shape)."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    function: FunctionCall
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    """One turn: `content` is text or parts (text, images); an assistant turn may carry its
    `tool_calls` (then `content` may be null), a `tool` turn answers one (`tool_call_id`)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


ToolName = Annotated[str, msgspec.Meta(pattern="^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDef(msgspec.Struct, frozen=True, omit_defaults=True):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; none: no arguments


class ToolDef(msgspec.Struct, frozen=True):
    function: FunctionDef
    type: Literal["function"] = "function"


class ChosenFunction(msgspec.Struct, frozen=True):
    name: ToolName


class ToolChoiceFunction(msgspec.Struct, frozen=True):
    function: ChosenFunction
    type: Literal["function"] = "function"


ToolChoiceIn = Literal["auto", "none", "required"] | ToolChoiceFunction


class JsonSchemaFormat(msgspec.Struct, frozen=True, omit_defaults=True):
    name: Annotated[str, msgspec.Meta(pattern="^[a-zA-Z0-9_-]{1,64}$")]
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


class ResponseFormatIn(msgspec.Struct, frozen=True, omit_defaults=True):
    """OpenAI's shape: `text`, `json_object`, or `json_schema` with its `json_schema`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+$", re.IGNORECASE)


def _image_problem(url: str) -> str | None:
    if url.startswith("https://"):
        return None if len(url) > len("https://") else "an https URL needs a host"
    if url.startswith("data:"):
        return None if _DATA_URL.match(url[:64] + url[-8:]) else "a data URL must be base64 image"
    return "must be an https: or data: URL"


def arguments_of(function: FunctionCall) -> dict[str, Any] | None:
    """A tool call's arguments as an object: OpenAI sends them as JSON text. None: not one."""
    args = function.arguments
    if isinstance(args, dict):
        return args
    try:
        parsed = json.loads(args)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _parts_problem(role: str, parts: list[TextPart | ImagePart]) -> str | None:
    if not parts:
        return ": `content` must not be an empty list"
    for j, part in enumerate(parts):
        if isinstance(part, ImagePart):
            if role != "user":
                return f".content[{j}]: images go in `user` turns"
            why = _image_problem(part.image_url.url)
            if why is not None:
                return f".content[{j}].image_url.url {why}"
    return None


def _message_problem(i: int, m: ChatMessage) -> str | None:
    at = f"`messages[{i}]`"
    if m.role == "tool" and not m.tool_call_id:
        return f"{at}: a `tool` turn needs `tool_call_id`"
    if m.role != "tool" and m.tool_call_id is not None:
        return f"{at}: only a `tool` turn carries `tool_call_id`"
    if m.tool_calls and m.role != "assistant":
        return f"{at}: only an `assistant` turn carries `tool_calls`"
    if m.content is None and not (m.role == "assistant" and m.tool_calls):
        return f"{at}: `content` is missing"
    if isinstance(m.content, list):
        why = _parts_problem(m.role, m.content)
        if why is not None:
            return f"{at}{why}"
    for k, call in enumerate(m.tool_calls or ()):
        if arguments_of(call.function) is None:
            return f"{at}.tool_calls[{k}].function.arguments is not a JSON object"
    return None


def _format_problem(fmt: ResponseFormatIn | None) -> str | None:
    if fmt is None:
        return None
    if fmt.type != "json_schema":
        if fmt.json_schema is not None:
            return "`response_format.json_schema` goes with type `json_schema` only"
        return None
    if fmt.json_schema is None:
        return "`response_format` of type `json_schema` needs its `json_schema`"
    why = schema_problem(fmt.json_schema.schema)
    if why is not None:
        return f"`response_format.json_schema.schema` is not a valid JSON Schema: {why}"
    return None


def _tools_problem(tools: list[ToolDef] | None, choice: ToolChoiceIn | None) -> str | None:
    names: set[str] = set()
    for i, tool in enumerate(tools or ()):
        name = tool.function.name
        if name in names:
            return f"`tools[{i}]`: a second tool named {name!r}"
        names.add(name)
        if tool.function.parameters is not None:
            why = schema_problem(tool.function.parameters)
            if why is not None:
                return f"`tools[{i}].function.parameters` is not a valid JSON Schema: {why}"
    if choice is None or choice in ("auto", "none"):
        return None
    if not names:
        return "`tool_choice` forces a tool call, but the prompt has no `tools`"
    if not isinstance(choice, str) and choice.function.name not in names:
        return f"`tool_choice` names {choice.function.name!r}, which is not in `tools`"
    return None


def structure_problem(
    messages: list[ChatMessage] | None,
    response_format: ResponseFormatIn | None,
    tools: list[ToolDef] | None,
    tool_choice: ToolChoiceIn | None,
) -> str | None:
    """The first rule of a prompt's structured fields it breaks, naming the field; or None."""
    for i, m in enumerate(messages or ()):
        why = _message_problem(i, m)
        if why is not None:
            return why
    return _format_problem(response_format) or _tools_problem(tools, tool_choice)


def _content(m: ChatMessage) -> str | tuple[base.ContentPart, ...] | None:
    if m.content is None or isinstance(m.content, str):
        return m.content
    parts: list[base.ContentPart] = []
    for part in m.content:
        if isinstance(part, TextPart):
            parts.append(base.TextPart(part.text))
        else:
            url = part.image_url
            parts.append(base.ImagePart(base.ImageURL(url.url, url.detail)))
    return tuple(parts)


def convert_messages(messages: list[ChatMessage]) -> tuple[base.Message, ...]:
    out = []
    for m in messages:
        calls = None
        if m.tool_calls:
            calls = tuple(
                base.ToolCall(c.id, c.function.name, arguments_of(c.function) or {})
                for c in m.tool_calls
            )
        out.append(base.Message(m.role, _content(m), calls, m.tool_call_id))
    return tuple(out)


def convert_structure(
    response_format: ResponseFormatIn | None,
    tool_defs: list[ToolDef] | None,
    tool_choice: ToolChoiceIn | None,
) -> tuple[base.ResponseFormat | None, tuple[base.Tool, ...] | None, base.ToolChoice | None]:
    """`response_format`, `tools`, `tool_choice` in the adapters' form."""
    fmt = None
    if response_format is not None:
        spec = response_format.json_schema
        fmt = base.ResponseFormat(
            type=response_format.type,
            name=spec.name if spec else None,
            schema=spec.schema if spec else None,
            strict=spec.strict if spec else None,
        )
    tools = None
    if tool_defs:
        tools = tuple(
            base.Tool(
                name=t.function.name,
                parameters=t.function.parameters or {"type": "object", "properties": {}},
                description=t.function.description,
            )
            for t in tool_defs
        )
    choice = None
    if isinstance(tool_choice, str):
        choice = base.ToolChoice(tool_choice)
    elif tool_choice is not None:
        choice = base.ToolChoice("function", tool_choice.function.name)
    return fmt, tools, choice
