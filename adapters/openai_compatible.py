"""OpenAI chat completions over aiohttp: OpenAI itself and every server speaking its wire format.

One call is one attempt: `POST {endpoint}/chat/completions`, where `endpoint` is the base URL
that already ends in `/v1`. HTTP and transport failures become `adapters.errors` classes; the
API key goes into the Authorization header only and is scrubbed from every error message.
The shared attempt (send, classify, redact) lives in `adapters._http`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from yarl import URL

from ._http import HTTPAdapter, Malformed, cap_tokens, decode_json
from .base import (
    Message,
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    Target,
    Tool,
    ToolCall,
    ToolChoice,
)
from .features import IMAGES, JSON_OBJECT, JSON_SCHEMA, REASONING, TOOLS
from .openai_stream import OpenAIAssembler, Usage, normal_finish, usage_counts

__all__ = ["OpenAIAdapter", "OpenAICompatibleAdapter"]


# -- the request's structured fields, as OpenAI's chat completions documents them ----------


class _WireFunctionCall(msgspec.Struct):
    name: str
    arguments: str  # JSON text, as OpenAI sends and takes it


class _WireToolCall(msgspec.Struct):
    id: str
    type: str  # "function" (no default: omit_defaults would drop it)
    function: _WireFunctionCall


class _WireMessage(msgspec.Struct, omit_defaults=True):
    """An assistant turn that made tool calls (their arguments as JSON text)."""

    role: str
    content: Any
    tool_calls: tuple[_WireToolCall, ...] | None = None
    tool_call_id: str | None = None


class _WireFunction(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _WireTool(msgspec.Struct):
    type: str  # "function"
    function: _WireFunction


class _ChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: tuple[Message | _WireMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: tuple[_WireTool, ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


_STREAM_OPTIONS: dict[str, Any] = {"include_usage": True}
"""Asks for the usage chunk before `[DONE]` (OpenAI, vLLM, llama.cpp's server; servers that do
not know the field, like llama-cpp-python's, ignore it and send no usage)."""


def _arguments_text(call: ToolCall) -> str:
    """What the model said: the raw text when it was no object, else the object as JSON."""
    if call.unparsed is not None:
        return call.unparsed
    return _encode(call.arguments).decode()


def _wire_message(message: Message, dialect: str) -> Message | _WireMessage:
    if not message.tool_calls:
        return message
    calls = tuple(
        _WireToolCall(c.id, "function", _WireFunctionCall(c.name, _arguments_text(c)))
        for c in message.tool_calls
    )
    content = message.content
    if content is None and dialect == "llama_cpp":
        content = ""  # llama-cpp-python's server answers a null content with a 500
    return _WireMessage(message.role, content, calls, message.tool_call_id)


def _wire_tools(tools: tuple[Tool, ...] | None) -> tuple[_WireTool, ...] | None:
    if not tools:
        return None
    return tuple(
        _WireTool("function", _WireFunction(t.name, t.description, t.parameters)) for t in tools
    )


def _wire_tool_choice(
    choice: ToolChoice | None, tools: tuple[Tool, ...] | None, dialect: str
) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    name = choice.name
    if choice.mode == "required" and dialect == "llama_cpp" and tools and len(tools) == 1:
        name = tools[0].name  # llama.cpp's server ignores "required": force the only tool
    elif choice.mode != "function":
        return choice.mode
    return {"type": "function", "function": {"name": name}}


def _wire_response_format(fmt: ResponseFormat | None, dialect: str) -> dict[str, Any] | None:
    """OpenAI's `json_schema` / `json_object`; llama-cpp-python's server takes a schema as
    `{"type": "json_object", "schema": ...}` (it has no `json_schema` type)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = fmt.schema if fmt.schema is not None else {}
    if dialect == "llama_cpp":
        return {"type": "json_object", "schema": schema}
    spec: dict[str, Any] = {"name": fmt.name or "response", "schema": schema}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


# -- the answer ------------------------------------------------------------------------------


class _AnswerFunction(msgspec.Struct):
    name: Any = None
    arguments: Any = None


class _AnswerToolCall(msgspec.Struct):
    id: Any = None
    function: _AnswerFunction | None = None


class _AnswerMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_AnswerToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _AnswerMessage | None = None
    finish_reason: str | None = None


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]
    id: str | None = None
    usage: Usage | None = None
    model: Any = None  # informational: never fail an answer over it


_encode = msgspec.json.Encoder().encode
_decode_completion = msgspec.json.Decoder(_ChatCompletion).decode


@lru_cache(maxsize=1024)
def _chat_url(endpoint: str) -> URL:
    return URL(endpoint.rstrip("/") + "/chat/completions")


def _tool_call(call: _AnswerToolCall, index: int) -> ToolCall:
    """One call of the answer: arguments (JSON text) parsed; no object -> {} and the text kept."""
    function = call.function or _AnswerFunction()
    raw = function.arguments
    arguments: Any = raw
    if isinstance(raw, str):
        arguments = decode_json(raw.encode()) if raw.strip() else {}
    unparsed: str | None = None
    if not isinstance(arguments, dict):
        unparsed = raw if isinstance(raw, str) else _encode(raw).decode()
        arguments = {}
    name = function.name if isinstance(function.name, str) else ""
    call_id = call.id if isinstance(call.id, str) and call.id else f"call_{index}"
    return ToolCall(call_id, name, arguments, unparsed)


class OpenAICompatibleAdapter(HTTPAdapter):
    """Adapter `openai_compatible`: vLLM, Ollama, llama.cpp, Groq, Together, OpenRouter...

    Carries JSON output, tools and images; not `reasoning_effort`: most such servers
    (llama.cpp, Ollama, TGI) ignore a field they do not know, so it would be silently dropped.
    """

    name = "openai_compatible"
    default_endpoint: ClassVar[str] = ""
    features: ClassVar[frozenset[str]] = frozenset({JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES})
    max_tokens_field: ClassVar[str] = "max_tokens"
    """Where the token cap goes: OpenAI's reasoning models refuse `max_tokens`."""

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _chat_url(endpoint)

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        """Also: llama.cpp's server ignores `tool_choice` "required"; with one tool it is sent
        as that tool by name, with several it is refused rather than silently dropped."""
        choice = request.tool_choice
        if (
            target.dialect == "llama_cpp"
            and choice is not None
            and choice.mode == "required"
            and len(request.tools or ()) > 1
        ):
            return (
                f'`tool_choice` "required" with several tools is not supported by provider '
                f"{target.provider} with dialect llama_cpp (its server ignores it): name one tool"
            )
        return super().unsupported(target, request)

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The JSON request body (None fields omitted, max_tokens capped by the target)."""
        return _encode(self._body(target, request))

    def build_stream_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The body with `"stream": true` and, when the server takes it, `stream_options`
        asking for the usage chunk."""
        body = self._body(target, request)
        body.stream = True
        body.stream_options = self.stream_options(target)
        return _encode(body)

    def stream_options(self, target: Target) -> dict[str, Any] | None:
        """What a streaming body asks for in `stream_options` (None: the field is left out)."""
        return _STREAM_OPTIONS

    def assembler(self, target: Target, request: ProviderRequest) -> OpenAIAssembler:
        return OpenAIAssembler(target)

    def _body(self, target: Target, request: ProviderRequest) -> _ChatBody:
        source = self.messages(target, request)
        messages: tuple[Message | _WireMessage, ...] = source
        if any(m.tool_calls for m in source):
            messages = tuple(_wire_message(m, target.dialect) for m in source)
        cap = cap_tokens(request.max_tokens, target.max_tokens)
        body = _ChatBody(
            model=target.model,
            messages=messages,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
        )
        if self.max_tokens_field == "max_tokens":
            body.max_tokens = cap
        else:
            body.max_completion_tokens = cap
        if (
            request.response_format is not None
            or request.tools is not None
            or request.tool_choice is not None
            or request.reasoning_effort is not None
        ):
            body.response_format = _wire_response_format(request.response_format, target.dialect)
            body.tools = _wire_tools(request.tools)
            body.tool_choice = _wire_tool_choice(request.tool_choice, request.tools, target.dialect)
            body.reasoning_effort = request.reasoning_effort
        return body

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        return headers

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_completion(payload)
        if not answer.choices:
            raise Malformed("no choices")
        choice = answer.choices[0]
        message = choice.message
        calls = message.tool_calls if message is not None else None
        tokens_in, tokens_out, cached, reasoning = usage_counts(answer.usage)
        return ProviderResult(
            text=(message.content if message is not None else None) or "",
            finish_reason=normal_finish(choice.finish_reason),
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            request_id=request_id or answer.id,
            response_id=answer.id,
            response_model=answer.model if isinstance(answer.model, str) else None,
            tool_calls=tuple(_tool_call(c, i) for i, c in enumerate(calls)) if calls else (),
            cached_input_tokens=cached,
            reasoning_tokens=reasoning,
        )


class OpenAIAdapter(OpenAICompatibleAdapter):
    """Adapter `openai`: api.openai.com unless the target names another endpoint. The token
    cap goes as `max_completion_tokens` (`max_tokens` is deprecated and refused by the
    reasoning models)."""

    name = "openai"
    default_endpoint: ClassVar[str] = "https://api.openai.com/v1"
    features: ClassVar[frozenset[str]] = frozenset(
        {JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES, REASONING}
    )
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
