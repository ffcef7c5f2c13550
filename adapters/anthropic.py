"""Anthropic's Messages API over aiohttp.

One call is one attempt: `POST {endpoint}/v1/messages` (the endpoint defaults to
`https://api.anthropic.com`; one that already ends in `/v1` is not doubled), with the key in
`x-api-key` and `anthropic-version: 2023-06-01`.

System messages move to the top-level `system` field (joined by a blank line); `max_tokens`,
which Anthropic requires, is the request's value capped by the target, else the target's, else
1024. `stop` becomes `stop_sequences`; `seed` has no Anthropic equivalent and is dropped.
Errors arrive as `{"type": "error", "error": {"type", "message"}, "request_id"}`; 529 and
`overloaded_error` are `Overloaded`, "prompt is too long" is `ContextLengthExceeded`.

Streaming (`stream`): the same body with `"stream": true`; the event stream is read by
`anthropic_stream.AnthropicAssembler` into the answer `complete` would give (an `error` event
mid-stream is classified like an error body with the status its type stands for).

Structured fields (docs.anthropic.com / platform.claude.com: tool use, vision, structured
outputs, extended thinking):

- Turns become content blocks: `text`, `image` (a `base64` source for `data:` URLs, a `url`
  source otherwise), an assistant's `tool_calls` become `tool_use` blocks and a `tool` turn a
  user turn holding a `tool_result` block. Consecutive turns of one role are merged into one
  (Anthropic alternates user and assistant; tool results come first in their user turn).
- `tools` → `[{name, description, input_schema}]`; `tool_choice` auto/required/function/none →
  `{"type": "auto" | "any" | "tool" | "none"}` (sent only with tools).
- `response_format` json_schema on a target with `structured_outputs` → `output_config.format`
  `{"type": "json_schema", "schema"}` (GA: no beta header), every object closed with
  `additionalProperties: false` as that feature requires, unless the schema uses a keyword it
  rejects (`_NATIVE_REJECTS`) or an object allows more; otherwise, and for json_object, a
  forced tool (the format's name or `json_answer`, input_schema the schema or
  `{"type": "object"}`) whose `tool_use` input comes back as the answer's `text`, not as a
  tool call.
- `reasoning_effort` → extended thinking `{"type": "enabled", "budget_tokens"}` with budgets
  low 1024 (Anthropic's minimum), medium 4096, high 16384. Anthropic counts thinking inside
  `max_tokens`: without a max_tokens the budget plus 1024 is sent; with one, the budget is cut
  to fit under it (refused below the 1024 minimum). Thinking forbids forced tools, temperature
  and top_p below 0.95, and wants its thinking blocks back beside earlier `tool_use` blocks
  (which the contract cannot carry): those combinations are refused before the call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from yarl import URL

from ._http import CONTEXT_HINTS, ErrorBody, HTTPAdapter, cap_tokens, strip_v1
from .anthropic_stream import AnthropicAssembler, Usage, counts, finish, json_answer
from .base import (
    ImagePart,
    ImageURL,
    Message,
    ProviderRequest,
    ProviderResult,
    Target,
    TextPart,
    ToolCall,
)
from .errors import BadRequest, Overloaded, ProviderError
from .features import IMAGES, JSON_OBJECT, JSON_SCHEMA, REASONING, TOOLS
from .http_client import Session

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "JSON_TOOL",
    "THINKING_BUDGETS",
    "AnthropicAdapter",
    "settled",
]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
JSON_TOOL = "json_answer"  # the forced tool carrying a JSON answer, when the format has no name
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
MIN_THINKING_BUDGET = 1024

_TOOL_CHOICE = {"auto": "auto", "required": "any", "function": "tool", "none": "none"}
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.DOTALL)
# JSON Schema keywords Anthropic's structured outputs reject (its documented limitations):
# such a schema goes as a forced tool instead, whose input_schema takes any schema.
_NATIVE_REJECTS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "maxItems",
    }
)


_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_LITERALS = frozenset({"enum", "const", "default", "examples"})


class _MessagesBody(msgspec.Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, str] | None = None
    output_config: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    stream: bool | None = None


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _MessageResponse(msgspec.Struct):
    content: list[_Block]
    id: str | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    model: Any = None  # informational: never fail an answer over it


_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(_MessageResponse).decode


@lru_cache(maxsize=1024)
def _messages_url(endpoint: str) -> URL:
    return URL(strip_v1(endpoint) + "/v1/messages")


# -- request: turns -----------------------------------------------------------------------------


def _image_block(image: ImageURL) -> dict[str, Any]:
    found = _DATA_URL.match(image.url)
    if found is not None:
        source = {"type": "base64", "media_type": found[1], "data": found[2]}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": image.url}}


def _blocks(message: Message) -> list[dict[str, Any]]:
    """The turn's content blocks: its text and images, then the tools it called."""
    content = message.content
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content is not None:
        for part in content:
            if isinstance(part, TextPart):
                blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                blocks.append(_image_block(part.image_url))
    for call in message.tool_calls or ():
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        )
    return blocks


def _turn(message: Message) -> tuple[str, str | list[dict[str, Any]]]:
    """One message as Anthropic's (role, content); plain text stays a string."""
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
        result["content"] = _blocks(message) if message.images else message.text
        return "user", [result]
    if isinstance(message.content, str) and not message.tool_calls:
        return message.role, message.content
    return message.role, _blocks(message)


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Content as blocks (no empty text block: Anthropic refuses those)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation with consecutive turns of one role merged into one."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role, content = _turn(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + _as_blocks(content)
        else:
            turns.append({"role": role, "content": content})
    return turns


# -- request: JSON answers, tools, thinking -------------------------------------------------------


def _uses(schema: Any, keywords: frozenset[str]) -> str | None:
    """The first of `keywords` used as a keyword anywhere in `schema`, or None (property
    names and the values of enum/const/default/examples are not keywords)."""
    children: list[Any] = []
    if isinstance(schema, list):
        children = schema
    elif isinstance(schema, dict):
        for key, value in schema.items():
            if key in keywords:
                return str(key)
            if key in _NAMED and isinstance(value, dict):
                children.extend(value.values())
            elif key not in _LITERALS:
                children.append(value)
    for child in children:
        found = _uses(child, keywords)
        if found is not None:
            return found
    return None


class _Open(Exception):
    """An object schema that allows more properties: structured outputs cannot take it."""


def _closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that leaves it
    unsaid (structured outputs require it on all objects; an answer valid for the closed schema
    is valid for the original, which the worker checks). `_Open` when one allows more."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _NAMED and isinstance(value, dict):
            copy[key] = {name: _closed(sub) for name, sub in value.items()}
        elif key in _LITERALS or key == "additionalProperties":
            copy[key] = value
        else:
            copy[key] = _closed(value)
    kind = schema.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in schema:
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            raise _Open
        copy["additionalProperties"] = False
    return copy


def _native_schema(target: Target, request: ProviderRequest) -> dict[str, Any] | None:
    """The schema to send as `output_config.format`, or None: not asked, the model has no
    structured outputs, or the schema is outside their subset (then a forced tool carries it)."""
    fmt = request.response_format
    if fmt is None or fmt.type != "json_schema" or not target.structured_outputs:
        return None
    schema = fmt.schema or {}
    if _uses(schema, _NATIVE_REJECTS) is not None:
        return None
    try:
        closed: dict[str, Any] = _closed(schema)
    except _Open:
        return None
    return closed


def settled(target: Target, request: ProviderRequest, result: ProviderResult) -> ProviderResult:
    """`result` as a call returns it: a JSON answer sent as the forced tool moved to `text`
    (also for a result read from a message batch, which carries the message as it came)."""
    json_tool = _json_tool(target, request)
    return result if json_tool is None else json_answer(result, json_tool["name"])


def _json_tool(target: Target, request: ProviderRequest) -> dict[str, Any] | None:
    """The forced tool a JSON answer travels in, or None (no JSON asked, or native)."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text" or _native_schema(target, request) is not None:
        return None
    name = fmt.name if fmt.name and _TOOL_NAME.match(fmt.name) else JSON_TOOL
    schema = fmt.schema if fmt.type == "json_schema" and fmt.schema else {"type": "object"}
    return {"name": name, "description": "Answer with this tool's input.", "input_schema": schema}


def _tools(
    request: ProviderRequest, json_tool: dict[str, Any] | None
) -> tuple[list[dict[str, Any]] | None, dict[str, str] | None]:
    """The `tools` and `tool_choice` fields (a forced JSON tool overrides the choice)."""
    tools: list[dict[str, Any]] = []
    for tool in request.tools or ():
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            entry["description"] = tool.description
        entry["input_schema"] = tool.parameters
        tools.append(entry)
    if json_tool is not None:
        return [*tools, json_tool], {"type": "tool", "name": json_tool["name"]}
    if not tools:
        return None, None
    choice = request.tool_choice
    if choice is None:
        return tools, None
    wire = {"type": _TOOL_CHOICE[choice.mode]}
    if choice.mode == "function" and choice.name is not None:
        wire["name"] = choice.name
    return tools, wire


def _json_tool_conflict(request: ProviderRequest, name: str) -> str | None:
    """What in `request` a JSON answer sent as the forced tool `name` cannot go with."""
    choice = request.tool_choice
    if request.tools and choice is not None and choice.mode in ("required", "function"):
        return (
            f"a JSON `response_format` with `tool_choice` {choice.mode} (without native "
            "structured outputs the JSON answer is itself a forced tool)"
        )
    if any(t.name == name for t in request.tools or ()):
        return (
            f"a JSON `response_format` beside a tool named {name!r} (the JSON answer travels "
            "in a tool of that name)"
        )
    return None


def _limits(target: Target, request: ProviderRequest) -> tuple[int, int | None]:
    """`max_tokens` and the thinking budget (None: no thinking). Thinking counts inside
    max_tokens: without a limit the budget gets DEFAULT_MAX_TOKENS on top for the answer."""
    cap = cap_tokens(request.max_tokens, target.max_tokens)
    effort = request.reasoning_effort
    if effort is None:
        return (DEFAULT_MAX_TOKENS if cap is None else cap), None
    budget = THINKING_BUDGETS[effort]
    if cap is None:
        return budget + DEFAULT_MAX_TOKENS, budget
    return cap, min(budget, cap - 1)


def _thinking_conflict(target: Target, request: ProviderRequest) -> str | None:
    """What in `request` extended thinking cannot go with, or None."""
    choice = request.tool_choice
    if _json_tool(target, request) is not None:
        return "a JSON answer sent as a forced tool (no native structured outputs)"
    if request.tools and choice is not None and choice.mode in ("required", "function"):
        return f"`tool_choice` {choice.mode}"
    if request.temperature is not None and request.temperature != 1.0:
        return "`temperature` other than 1"
    if request.top_p is not None and request.top_p < 0.95:
        return "`top_p` below 0.95"
    if any(m.tool_calls for m in request.messages or ()):
        return "earlier assistant tool calls (their thinking blocks are not kept)"
    budget = _limits(target, request)[1]
    if budget is not None and budget < MIN_THINKING_BUDGET:
        return f"`max_tokens` of {MIN_THINKING_BUDGET} or less"
    return None


# -- the answer ---------------------------------------------------------------------------------


def _tool_call(block: _Block) -> ToolCall:
    arguments = block.input
    if isinstance(arguments, dict):
        return ToolCall(id=block.id or "", name=block.name or "", arguments=arguments)
    unparsed = str(_encode(arguments), "utf-8")
    return ToolCall(id=block.id or "", name=block.name or "", arguments={}, unparsed=unparsed)


class AnthropicAdapter(HTTPAdapter):
    """Adapter `anthropic`: api.anthropic.com unless the target names another endpoint."""

    name = "anthropic"
    default_endpoint: ClassVar[str] = "https://api.anthropic.com"
    request_id_headers: ClassVar[tuple[str, ...]] = ("request-id", "x-request-id")
    context_hints: ClassVar[tuple[str, ...]] = (
        *CONTEXT_HINTS,
        "prompt is too long",
        "exceed context limit",
    )
    features: ClassVar[frozenset[str]] = frozenset(
        {JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES, REASONING}
    )

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        why = super().unsupported(target, request)
        if why is not None:
            return why
        where = f"provider {target.provider} (model {target.model})"
        json_tool = _json_tool(target, request)
        if json_tool is not None:
            conflict = _json_tool_conflict(request, json_tool["name"])
            if conflict is not None:
                return f"{conflict} is not supported by {where}"
        if request.reasoning_effort is not None:
            conflict = _thinking_conflict(target, request)
            if conflict is not None:
                return f"`reasoning_effort` with {conflict} is not supported by {where}"
        return None

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _messages_url(endpoint)

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if target.api_key is not None:
            headers["x-api-key"] = target.api_key.reveal()
        return headers

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        return self._body(target, request, stream=False)

    def build_stream_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The Messages body with `"stream": true`: the answer comes as server-sent events."""
        return self._body(target, request, stream=True)

    def assembler(self, target: Target, request: ProviderRequest) -> AnthropicAssembler:
        json_tool = _json_tool(target, request)
        return AnthropicAssembler(target, None if json_tool is None else json_tool["name"])

    def _body(self, target: Target, request: ProviderRequest, *, stream: bool) -> bytes:
        system: list[str] = []
        turns: list[Message] = []
        for message in self.messages(target, request):
            if message.role == "system":
                system.append(message.text)
            else:
                turns.append(message)
        if not turns:
            raise self.error(BadRequest, target, "request has no user or assistant message")
        max_tokens, budget = _limits(target, request)
        tools, tool_choice = _tools(request, _json_tool(target, request))
        native = _native_schema(target, request)
        output_config = None
        if native is not None:
            output_config = {"format": {"type": "json_schema", "schema": native}}
        return _encode(
            _MessagesBody(
                model=target.model,
                max_tokens=max_tokens,
                messages=_turns(turns),
                system="\n\n".join(system) if system else None,
                temperature=request.temperature,
                top_p=request.top_p,
                stop_sequences=request.stop,
                tools=tools,
                tool_choice=tool_choice,
                output_config=output_config,
                thinking=None if budget is None else {"type": "enabled", "budget_tokens": budget},
                stream=True if stream else None,
            )
        )

    async def complete(
        self, session: Session, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        return settled(target, request, await super().complete(session, target, request))

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_message(payload)
        text = "".join(b.text for b in answer.content if b.type == "text" and b.text)
        calls = tuple(_tool_call(b) for b in answer.content if b.type == "tool_use")
        # cache reads and writes counted inside input_tokens, as a stream counts them
        input_tokens, output_tokens, cached, written = counts(answer.usage or Usage())
        return ProviderResult(
            text=text,
            finish_reason=finish(answer.stop_reason),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=request_id or answer.id,
            response_id=answer.id,
            response_model=answer.model if isinstance(answer.model, str) else None,
            tool_calls=calls,
            cached_input_tokens=cached,
            cache_write_tokens=written,
        )

    def error_class(self, status: int, info: ErrorBody) -> type[ProviderError]:
        if info.kind == "overloaded_error" and status >= 500:
            return Overloaded
        return super().error_class(status, info)
