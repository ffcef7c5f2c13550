"""Hugging Face: Text Generation Inference (TGI) and Inference Endpoints, in two wire forms.

The endpoint chooses the form:

- path ends in `/generate`: TGI's native API. `POST {endpoint}` with `{"inputs": <prompt>,
  "parameters": {"max_new_tokens", "temperature", "top_p", "stop", "seed", "grammar",
  "details": true}}`; messages are flattened into `role: content` lines ending with an
  `assistant:` cue. The answer is `generated_text` with `details.finish_reason` (`length` →
  "length", `eos_token` and `stop_sequence` → "stop") and `details.generated_tokens`; input
  tokens come from `details.prefill` when TGI returned it, else its `x-prompt-tokens` header.
  TGI rejects `temperature: 0` (greedy is its default) and `top_p` outside (0, 1), so such values
  are left out rather than sent. A JSON answer is asked as a grammar, `{"type": "json", "value":
  <schema>}`; tools and images have no place in this form and are refused.
- otherwise: the OpenAI-style Messages API, `POST {endpoint}/v1/chat/completions` (or
  `{endpoint}/chat/completions` when the endpoint already ends in `/v1`). Without an endpoint:
  the Inference Providers router. The two servers behind this form differ in how they take a
  JSON answer and past tool calls: TGI takes its grammar as `response_format` and a past call's
  arguments as an object; the router (`router.huggingface.co`) forwards to providers speaking
  OpenAI's wire format (`json_schema`, arguments as JSON text). TGI cannot constrain to a grammar
  and to tools at once, and keeps either the text or the tool calls of an assistant turn: such
  requests are refused rather than sent half.

Streaming (`stream`): the `/generate` form posts the same body to `{endpoint}_stream` (TGI's
`/generate_stream`), the Messages API the chat body with `"stream": true` and
`stream_options.include_usage`; `adapters.tgi_stream` reads both event streams.

Both send `Authorization: Bearer <token>`. TGI's errors are `{"error": "...", "error_type":
"..."}`; 503 while a model loads (with `estimated_time`, used as the retry hint) and 424 (the
model failed to generate) are `ServerError`, so the worker retries them. `reasoning_effort` is
carried by neither form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from yarl import URL

from ._http import (
    CONTEXT_HINTS,
    ErrorBody,
    HTTPAdapter,
    Malformed,
    cap_tokens,
    decode_json,
    json_error,
    strip_v1,
)
from .base import (
    ContentPart,
    Message,
    OnDelta,
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    Target,
    Tool,
    ToolCall,
    ToolChoice,
)
from .errors import ProviderError, ServerError
from .features import IMAGES, JSON_OBJECT, JSON_SCHEMA, TOOLS
from .http_client import Session
from .streaming import Assembler
from .tgi_stream import ChatStream, GenerateStream
from .tgi_stream import finish_reason as _finish

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "HuggingFaceAdapter",
    "flatten",
    "is_generate_endpoint",
    "is_router_endpoint",
]

DEFAULT_HF_ENDPOINT = "https://router.huggingface.co/v1"
ROUTER_HOST = "router.huggingface.co"

_CONTEXT_HINTS = (
    *CONTEXT_HINTS,
    "`inputs` tokens + `max_new_tokens`",
    "`inputs` must have less than",
)
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


# -- /generate ---------------------------------------------------------------------------------


class _Parameters(msgspec.Struct, kw_only=True, omit_defaults=True):
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    grammar: dict[str, Any] | None = None
    details: bool


class _GenerateBody(msgspec.Struct):
    inputs: str
    parameters: _Parameters


class _Details(msgspec.Struct):
    finish_reason: str | None = None
    generated_tokens: int | None = None
    prefill: list[msgspec.Raw] = []


class _Generation(msgspec.Struct):
    generated_text: str
    details: _Details | None = None


# -- the Messages API: the request -------------------------------------------------------------


class _WireFunction(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _WireTool(msgspec.Struct):
    type: str  # "function" (no default: omit_defaults would drop it)
    function: _WireFunction


class _WireCalled(msgspec.Struct):
    name: str
    arguments: Any  # TGI: the object; the router: JSON text, as OpenAI takes it


class _WireCall(msgspec.Struct):
    id: str
    type: str  # "function"
    function: _WireCalled


class _WireMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | tuple[ContentPart, ...] | None = None
    tool_calls: tuple[_WireCall, ...] | None = None
    tool_call_id: str | None = None


class _ChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: tuple[_WireMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: tuple[_WireTool, ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool | None = None
    stream_options: dict[str, bool] | None = None


# -- the Messages API: the answer --------------------------------------------------------------


class _AnswerFunction(msgspec.Struct):
    name: str = ""
    arguments: Any = None
    parameters: Any = None  # TGI 1.4 named the arguments so


class _AnswerCall(msgspec.Struct):
    function: _AnswerFunction
    id: Any = None  # a string; TGI 1.4 sent the number 0


class _AnswerMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_AnswerCall] | _AnswerCall | None = None  # TGI 1.4: one object, no list


class _Choice(msgspec.Struct):
    message: _AnswerMessage | None = None
    finish_reason: str | None = None


class _TokenDetails(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _TokenDetails | None = None  # the router's providers, as OpenAI
    completion_tokens_details: _TokenDetails | None = None


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]
    id: str | None = None
    usage: _Usage | None = None
    model: Any = None  # informational: never fail an answer over it


_encode = msgspec.json.Encoder().encode
_decode_generation = msgspec.json.Decoder(_Generation | list[_Generation]).decode
_decode_completion = msgspec.json.Decoder(_ChatCompletion).decode


@lru_cache(maxsize=1024)
def is_generate_endpoint(endpoint: str) -> bool:
    """True when the endpoint is TGI's native `/generate` route (False for a URL that does
    not parse: the attempt then refuses it as an invalid endpoint URL)."""
    try:
        return URL(endpoint).path.rstrip("/").endswith("/generate")
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def is_router_endpoint(endpoint: str) -> bool:
    """True for the Inference Providers router (OpenAI's wire format), False for a TGI server
    or Inference Endpoint (TGI's)."""
    try:
        return URL(endpoint).host == ROUTER_HOST
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def _chat_url(endpoint: str) -> URL:
    return URL(strip_v1(endpoint) + "/v1/chat/completions")


def flatten(messages: Iterable[Message]) -> str:
    """`role: content` lines and a closing `assistant:` cue, for a model without a chat API."""
    lines = [f"{m.role}: {m.text}" for m in messages]
    lines.append("assistant:")
    return "\n".join(lines)


def _int_header(headers: Mapping[str, str], name: str) -> int:
    try:
        return max(int(headers.get(name) or 0), 0)
    except ValueError:
        return 0


def _schema(fmt: ResponseFormat) -> dict[str, Any]:
    """The schema the answer must match: the request's, or any object for `json_object`."""
    if fmt.type == "json_schema" and fmt.schema is not None:
        return fmt.schema
    return _ANY_OBJECT


def _tgi_grammar(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """TGI's JSON grammar, `{"type": "json", "value": <JSON Schema>}`: `parameters.grammar` of
    `/generate` and `response_format` of the Messages API alike (GrammarType in TGI's API
    reference, docs/openapi.json; the guidance page,
    https://huggingface.co/docs/text-generation-inference/basic_tutorials/using_guidance).
    TGI takes it since 2.1; its `json_schema` variant (3.3+, `{"value": {"name", "schema"}}`,
    not OpenAI's shape) adds nothing the worker needs."""
    if fmt is None or fmt.type == "text":
        return None
    return {"type": "json", "value": _schema(fmt)}


def _router_format(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """OpenAI's `response_format`, as the router's structured-output guide sends it
    (https://huggingface.co/docs/inference-providers/guides/structured-output)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name or "response", "schema": _schema(fmt)}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def _wire_tools(tools: tuple[Tool, ...] | None) -> tuple[_WireTool, ...] | None:
    if not tools:
        return None
    return tuple(
        _WireTool("function", _WireFunction(t.name, t.description, t.parameters)) for t in tools
    )


def _wire_tool_choice(choice: ToolChoice | None) -> str | dict[str, Any] | None:
    """`auto`, `none`, `required`, or the function object: the modes TGI's guidance page lists
    under "Tool Choice Configuration" (OpenAI's, which the router takes too)."""
    if choice is None:
        return None
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _has_content(message: Message) -> bool:
    return message.content is not None and message.content not in ("", ())


def _past_arguments(call: ToolCall, router: bool) -> Any:
    """A past call's arguments: what the model said when it was no object; else the object
    for TGI (its chat template renders it) or its JSON text for the router (OpenAI's type)."""
    if call.unparsed is not None:
        return call.unparsed
    return _encode(call.arguments).decode() if router else call.arguments


def _wire_messages(messages: tuple[Message, ...], router: bool) -> tuple[_WireMessage, ...]:
    wire: list[_WireMessage] = []
    for m in messages:
        calls = None
        if m.tool_calls:
            calls = tuple(
                _WireCall(c.id, "function", _WireCalled(c.name, _past_arguments(c, router)))
                for c in m.tool_calls
            )
        # TGI reads a turn with `content` as text: a tool-call turn goes without one
        content = m.content if calls is None or _has_content(m) else None
        wire.append(_WireMessage(m.role, content, calls, m.tool_call_id))
    return tuple(wire)


def _arguments(function: _AnswerFunction) -> tuple[dict[str, Any], str | None]:
    """The arguments as an object (TGI before 3.2 sends one, TGI 3.2+ and the router JSON
    text), or `{}` and what was said when it is no JSON object."""
    raw = function.arguments if function.arguments is not None else function.parameters
    if raw is None:
        return {}, None
    if isinstance(raw, dict):
        return raw, None
    text = raw if isinstance(raw, str) else _encode(raw).decode()
    doc = decode_json(text.encode())
    if isinstance(doc, dict):
        return doc, None
    return {}, text


def _tool_calls(message: _AnswerMessage | None) -> tuple[ToolCall, ...]:
    if message is None or message.tool_calls is None:
        return ()
    calls = message.tool_calls
    if not isinstance(calls, list):
        calls = [calls]
    parsed: list[ToolCall] = []
    for index, call in enumerate(calls):
        ident = call.id
        if isinstance(ident, bool) or not isinstance(ident, str | int):
            ident = index
        arguments, unparsed = _arguments(call.function)
        parsed.append(ToolCall(str(ident), call.function.name, arguments, unparsed))
    return tuple(parsed)


class _TGIForm(HTTPAdapter):
    """Headers, error bodies and classes shared by both forms."""

    name = "huggingface"
    context_hints: ClassVar[tuple[str, ...]] = _CONTEXT_HINTS

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        return headers

    def read_error(self, payload: bytes) -> ErrorBody:
        info = json_error(payload)
        doc = decode_json(payload)
        if isinstance(doc, dict):
            wait = doc.get("estimated_time")
            if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
                info = info._replace(retry_after=float(wait))
        return info

    def error_class(self, status: int, info: ErrorBody) -> type[ProviderError]:
        if status == 424:
            return ServerError
        return super().error_class(status, info)

    def refusal(self, target: Target, what: str, why: str) -> str:
        return (
            f"{what} is not supported by provider {target.provider} (model {target.model}): {why}"
        )


class _ChatForm(_TGIForm):
    """The Messages API: TGI's `/v1/chat/completions`, or the Inference Providers router."""

    default_endpoint: ClassVar[str] = DEFAULT_HF_ENDPOINT
    # JSON answers, tools (tool_choice auto/none/required/a function, tool turns) and images
    # (image_url parts, for vision models): TGI's guidance and vision-language-model pages
    features: ClassVar[frozenset[str]] = frozenset({JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES})

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _chat_url(endpoint)

    def is_router(self, target: Target) -> bool:
        return is_router_endpoint(self.endpoint_for(target))

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        why = super().unsupported(target, request)
        if why is not None or self.is_router(target):
            return why
        fmt = request.response_format
        if request.tools and fmt is not None and fmt.wants_json:
            return self.refusal(
                target,
                f'`tools` together with `response_format` {{"type": "{fmt.type}"}}',
                "TGI's Messages API takes a grammar or tools, not both",
            )
        if any(m.tool_calls and _has_content(m) for m in request.messages or ()):
            return self.refusal(
                target,
                "an assistant turn with both `content` and `tool_calls`",
                "TGI's Messages API reads such a turn as its text alone",
            )
        return None

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The JSON request body (None fields omitted, max_tokens capped by the target)."""
        return _encode(self._body(target, request))

    def build_stream_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The body with `"stream": true` and `stream_options.include_usage` (TGI 2.3+ and
        OpenAI's providers send the usage in a last chunk; an older TGI ignores the field)."""
        body = self._body(target, request)
        body.stream = True
        body.stream_options = {"include_usage": True}
        return _encode(body)

    def assembler(self, target: Target, request: ProviderRequest) -> Assembler:
        return ChatStream(target)

    def _body(self, target: Target, request: ProviderRequest) -> _ChatBody:
        router = self.is_router(target)
        fmt = request.response_format
        return _ChatBody(
            model=target.model,
            messages=_wire_messages(self.messages(target, request), router),
            max_tokens=cap_tokens(request.max_tokens, target.max_tokens),
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            response_format=_router_format(fmt) if router else _tgi_grammar(fmt),
            tools=_wire_tools(request.tools),
            tool_choice=_wire_tool_choice(request.tool_choice),
        )

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_completion(payload)
        if not answer.choices:
            raise Malformed("no choices")
        choice = answer.choices[0]
        message = choice.message
        calls = _tool_calls(message)
        usage = answer.usage or _Usage()
        cached = usage.prompt_tokens_details or _TokenDetails()
        reasoning = usage.completion_tokens_details or _TokenDetails()
        return ProviderResult(
            text=(message.content if message is not None else None) or "",
            finish_reason=_finish(choice.finish_reason, bool(calls)),
            input_tokens=usage.prompt_tokens or 0,
            output_tokens=usage.completion_tokens or 0,
            request_id=request_id or answer.id or None,
            response_id=answer.id or None,
            response_model=answer.model if isinstance(answer.model, str) else None,
            tool_calls=calls,
            cached_input_tokens=cached.cached_tokens or 0,
            reasoning_tokens=reasoning.reasoning_tokens or 0,
        )


class _GenerateForm(_TGIForm):
    """TGI's native `/generate`: a prompt and parameters, a JSON answer by grammar."""

    features: ClassVar[frozenset[str]] = frozenset({JSON_OBJECT, JSON_SCHEMA})

    def url_for(self, endpoint: str, target: Target) -> URL:
        return URL(endpoint)

    def stream_url_for(self, endpoint: str, target: Target) -> URL:
        """`.../generate` → `.../generate_stream`, the rest of the URL kept."""
        url = URL(endpoint)
        return url.with_path(url.path.rstrip("/") + "_stream").with_query(url.query)

    def build_stream_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The `/generate` body as it is: `/generate_stream` takes the same request and has no
        `stream` field (that is the `POST /` route's); `details: true` gets the last event its
        finish reason and token counts."""
        return self.build_body(target, request)

    def assembler(self, target: Target, request: ProviderRequest) -> Assembler:
        return GenerateStream(target)

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        if request.messages is None and request.prompt is not None:
            inputs = request.prompt
        else:
            inputs = flatten(self.messages(target, request))
        temperature = request.temperature
        top_p = request.top_p
        return _encode(
            _GenerateBody(
                inputs=inputs,
                parameters=_Parameters(
                    max_new_tokens=cap_tokens(request.max_tokens, target.max_tokens),
                    temperature=temperature if temperature is None or temperature > 0 else None,
                    top_p=top_p if top_p is None or 0 < top_p < 1 else None,
                    stop=request.stop,
                    seed=request.seed,
                    grammar=_tgi_grammar(request.response_format),
                    details=True,
                ),
            )
        )

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_generation(payload)
        if isinstance(answer, list):
            if not answer:
                raise Malformed("empty list")
            answer = answer[0]
        details = answer.details
        reason = details.finish_reason if details is not None else None
        generated = details.generated_tokens if details is not None else None
        prefill = len(details.prefill) if details is not None else 0
        return ProviderResult(
            text=answer.generated_text,
            finish_reason=_finish(reason, False),
            input_tokens=prefill or _int_header(headers, "x-prompt-tokens"),
            output_tokens=generated or _int_header(headers, "x-generated-tokens"),
            request_id=request_id,
        )


class HuggingFaceAdapter:
    """Adapter `huggingface`: TGI's `/generate` or the OpenAI-style Messages API, by endpoint."""

    name = "huggingface"

    def __init__(self) -> None:
        self._chat = _ChatForm()
        self._generate = _GenerateForm()

    def endpoint_for(self, target: Target) -> str:
        """The base URL an attempt for `target` goes to (for `SessionPool.get`)."""
        return target.endpoint or DEFAULT_HF_ENDPOINT

    def form_for(self, target: Target) -> HTTPAdapter:
        endpoint = target.endpoint
        if endpoint and is_generate_endpoint(endpoint):
            return self._generate
        return self._chat

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        """Why the form `target`'s endpoint selects cannot honour `request`, or None."""
        return self.form_for(target).unsupported(target, request)

    async def complete(
        self, session: Session, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        """One attempt. Raises `adapters.errors.ProviderError` subclasses, nothing else."""
        return await self.form_for(target).complete(session, target, request)

    async def stream(
        self,
        session: Session,
        target: Target,
        request: ProviderRequest,
        on_delta: OnDelta,
    ) -> ProviderResult:
        """One streaming attempt, on the form the endpoint selects (`Adapter.stream`)."""
        return await self.form_for(target).stream(session, target, request, on_delta)
