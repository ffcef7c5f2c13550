"""The adapter interface: a normalized request in, a normalized result (or a typed error) out.

Adapters do no retries and hold no sessions of their own: the caller passes the pooled
client for the endpoint (`adapters.http_client.Session`: an `aiohttp.ClientSession` or the
`adapters.h1` client), and the retry loop lives in the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeAlias

import msgspec

from ._body import DEFAULT_MAX_RESPONSE_BYTES
from .http_client import Session
from .secrets import Secret

__all__ = [
    "Adapter",
    "ContentPart",
    "ImagePart",
    "ImageURL",
    "Message",
    "OnDelta",
    "ProviderRequest",
    "ProviderResult",
    "ResponseFormat",
    "StreamDelta",
    "Target",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
]


class TextPart(msgspec.Struct, frozen=True, tag="text", tag_field="type"):
    text: str


class ImageURL(msgspec.Struct, frozen=True, omit_defaults=True):
    url: str  # https: or data:<mime>;base64,... (checked on intake)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(msgspec.Struct, frozen=True, tag="image_url", tag_field="type"):
    image_url: ImageURL


ContentPart: TypeAlias = TextPart | ImagePart


# gc=False here and on ProviderResult, CallResult and Candidate: answers are kept by the
# thousand in the dedup window, and frozen structs take part in no cycle, so the collector
# need not walk them (tests/unit/test_dedup_gc.py; docs/BENCHMARKS.md, fourth round)
class ToolCall(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A call the model asked for: `arguments` parsed (an object), whatever the wire said. An
    answer whose arguments are no JSON object keeps them in `unparsed` (and `arguments` {}):
    the worker's output check turns that into `invalid_output`, never `ok`."""

    id: str
    name: str
    arguments: dict[str, Any]
    unparsed: str | None = None


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    """One turn. `content` is text or parts (text, images); an assistant turn may carry the
    `tool_calls` it made, and a `tool` turn answers one of them (`tool_call_id`)."""

    role: str  # system | user | assistant | tool
    content: str | tuple[ContentPart, ...] | None
    tool_calls: tuple[ToolCall, ...] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The text of the turn (its text parts joined; images are not text)."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImageURL, ...]:
        content = self.content
        if content is None or isinstance(content, str):
            return ()
        return tuple(p.image_url for p in content if isinstance(p, ImagePart))


class Tool(msgspec.Struct, frozen=True, omit_defaults=True):
    """A function the model may call; `parameters` is its arguments' JSON Schema."""

    name: str
    parameters: dict[str, Any]
    description: str | None = None


class ToolChoice(msgspec.Struct, frozen=True, omit_defaults=True):
    """`auto`, `none`, `required` (some tool), or `function` (the tool `name`)."""

    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None


class ResponseFormat(msgspec.Struct, frozen=True, omit_defaults=True):
    """`text`, `json_object` (any JSON object), or `json_schema` (valid for `schema`)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None

    @property
    def wants_json(self) -> bool:
        return self.type != "text"


class ProviderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller asked for, provider-neutral. Exactly one of messages/prompt is set."""

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    tools: tuple[Tool, ...] | None = None
    tool_choice: ToolChoice | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where one attempt goes: resolved from a registry row (primary or fallback)."""

    provider: str  # adapter name: openai, openai_compatible, anthropic, ..., fake
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str  # the provider's model name (registry `upstream_model` / `fallback_model`)
    endpoint_name: str  # stable label for metrics and completions, e.g. "primary:openai"
    api_key: Secret | None = None
    timeout_ms: int = 30_000
    max_tokens: int | None = None  # the registry row's cap / default
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # a longer answer is not read
    dialect: str = "openai"  # openai_compatible servers: openai | llama_cpp (registry column)
    structured_outputs: bool = False  # the model takes a JSON schema natively (registry)
    stream_idle_ms: int = 30_000  # a stream with no event for this long has stalled: a timeout


# gc=False: not walked by the collector (see ToolCall in adapters/base.py)
class ProviderResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    text: str
    finish_reason: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    request_id: str | None = None
    response_id: str | None = None  # the answer's own id (chatcmpl-..., msg_...), if it has one
    response_model: str | None = None  # the model that answered, as the provider names it
    tool_calls: tuple[ToolCall, ...] = ()
    cached_input_tokens: int = 0  # of input_tokens, read from the provider's cache
    cache_write_tokens: int = 0  # input written to the provider's cache (billed apart)
    reasoning_tokens: int = 0  # of output_tokens, spent reasoning


class ToolCallDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """A piece of the tool call at `index` (the order of the answer's calls): its `id` and
    `name` when they first arrive, then pieces of its `arguments` JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class StreamDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one streamed event added to the answer: text and/or pieces of tool calls. The
    result a stream ends with is the sum of its deltas (`text` joined, calls assembled)."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


OnDelta = Callable[[StreamDelta], None]
"""Called with each piece of a streamed answer, in order, as it arrives."""


class Adapter(Protocol):
    name: str

    def endpoint_for(self, target: Target) -> str:
        """The base URL this adapter calls for `target` (its default when the row has none)."""
        ...

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        """Why this adapter cannot honour `request` at `target` (naming the field and the
        provider), or None: checked before any call, so nothing asked is silently dropped."""
        ...

    async def complete(
        self, session: Session, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        """One attempt. Raises `adapters.errors.ProviderError` subclasses, nothing else."""
        ...

    async def stream(
        self,
        session: Session,
        target: Target,
        request: ProviderRequest,
        on_delta: OnDelta,
    ) -> ProviderResult:
        """One attempt in the provider's streaming mode: each piece of the answer goes to
        `on_delta` as it arrives, then the whole result is returned (its text is the pieces
        joined). Raises `ProviderError` subclasses, nothing else, also after pieces were
        given; a stream with no event for `target.stream_idle_ms` is a `ProviderTimeout`."""
        ...
