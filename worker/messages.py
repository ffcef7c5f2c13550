"""The message contracts: prompts in, completions out, dead letters aside.

`decode_prompt` turns raw Kafka bytes into a `Prompt`, or tells the caller why it could not:
`Rejected(dlq=False)` when the input is readable (an `id` was recovered) and deserves an
`error` completion, `Rejected(dlq=True)` when nothing can be answered and the bytes belong in
the dead-letter topic.

What a rejection echoes is bounded whatever the input holds, so an error completion is never
larger than an `ok` one could be: the `id` (at most 128 characters), the `model` when it is a
valid one (else ""), the `metadata` only when it encodes within `max_metadata_bytes` (else
none, and the message says it was dropped), and a message of at most `MAX_ERROR_CHARS`.

Text that is valid JSON but not valid Unicode (a lone UTF-16 surrogate escape such as
`"\\ud800"`, which Python's `json.dumps` writes) is a `validation_error` naming the field, read
with the standard library's parser since msgspec refuses the whole document. An `id` that holds
one cannot be echoed in UTF-8, so that record is dead-lettered (`missing_id`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec

from llm_worker.adapters.base import ProviderRequest

from .prompt_fields import (
    ChatMessage,
    ResponseFormatIn,
    ToolChoiceIn,
    ToolDef,
    convert_messages,
    convert_structure,
    structure_problem,
)

__all__ = [
    "MAX_ERROR_CHARS",
    "ChatMessage",
    "Completion",
    "ErrorInfo",
    "Prompt",
    "Rejected",
    "ToolCallOut",
    "Usage",
    "completion_schema",
    "decode_prompt",
    "encode",
    "prompt_schema",
    "provider_request",
    "schema_of",
]

MAX_ID_CHARS = 128
MAX_MODEL_CHARS = 256
MAX_ERROR_CHARS = 1000
"""The longest error message a rejection carries: a validation message quotes the value it
refused (an enum value, say), which may be as long as the record."""

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]


class Prompt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One request on `llm_prompts`. Unknown fields are ignored."""

    id: RequestId
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_CHARS)]
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tenant: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    metadata: dict[str, Any] | None = None
    dedup: bool = True
    response_format: ResponseFormatIn | None = None
    tools: Annotated[list[ToolDef], msgspec.Meta(max_length=128)] | None = None
    tool_choice: ToolChoiceIn | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    stream: bool | None = None  # None: the row's `stream`, else LLM_WORKER_STREAM
    deadline: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """When the answer stops being useful: epoch milliseconds (wall clock)."""
    ttl_ms: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """The same, relative: milliseconds from the record's Kafka timestamp (from when the worker
    took it, for a record without one). With `deadline` too, the earlier of the two wins."""
    priority: Literal["high", "normal", "low"] | None = None  # None: the row's, else normal
    lane: Literal["online", "batch"] | None = None  # None: the row's `lane`, else online


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and their price. `cached_input_tokens` are part of `input_tokens` (read from the
    provider's prompt cache, priced at the row's cached rate), `cache_write_tokens` were
    written to it (priced apart), `reasoning_tokens` are part of `output_tokens`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None


class ToolCallOut(msgspec.Struct, frozen=True):
    """A tool call the model made: `arguments` is always a parsed JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    message: str
    retryable: bool = False


class Completion(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """One outcome on `llm_completions`, for every prompt that carried a readable `id`."""

    id: str
    model: str
    status: Literal["ok", "error"]
    metadata: dict[str, Any] | None = None
    text: str | None = None
    json: Any = None  # the parsed answer, when `response_format` asked for JSON
    tool_calls: list[ToolCallOut] | None = None
    finish_reason: str | None = None  # stop | length | tool_calls | content_filter | ...
    provider: str | None = None
    upstream_model: str | None = None
    endpoint_name: str | None = None
    usage: Usage | None = None
    latency_ms: float | None = None
    queue_ms: float | None = None
    deduplicated: bool = False
    fallback_used: bool = False
    attempts: int = 0
    canned: bool = False  # every candidate failed: the row's `canned_response`, cause in error
    error: ErrorInfo | None = None
    lane: Literal["online", "batch"] = "online"  # batch: answered through a provider batch job
    batch_id: str | None = None  # the provider's id of that job


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """Why an input could not become a `Prompt`."""

    reason: str  # machine-readable: invalid_json, missing_id, validation_error, payload_too_large
    message: str
    dlq: bool
    request_id: str | None = None
    model: str = ""
    metadata: dict[str, Any] | None = None


class _IdOnly(msgspec.Struct):
    id: RequestId
    model: Any = ""
    metadata: Any = None


_prompt_decoder = msgspec.json.Decoder(Prompt)
_id_decoder = msgspec.json.Decoder(_IdOnly)
_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def _recover(raw: bytes) -> tuple[str, Any, Any] | None:
    """(id, model, metadata) of an input that is not a valid prompt, as found: None when no
    `id` can be read."""
    try:
        found = _id_decoder.decode(raw)
    except UnicodeDecodeError:  # bytes that are not UTF-8 in the model or the metadata
        doc = _lenient(raw)
    except msgspec.DecodeError:  # not JSON, or text that is not valid Unicode
        maybe = _SURROGATE_ESCAPE.search(raw) is not None or not _is_utf8(raw)
        doc = _lenient(raw) if maybe else None
    except RecursionError:  # nested past msgspec's depth (Python's parser has one too)
        return None
    else:
        return found.id, found.model, found.metadata
    if doc is None:
        return None
    rid = doc.get("id")
    if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_ID_CHARS or not _encodable(rid):
        return None  # an id that is not valid Unicode cannot be echoed: no completion can
    return rid, doc.get("model", ""), doc.get("metadata")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _lenient(raw: bytes) -> dict[str, Any] | None:
    """The object Python's own parser reads from `raw`, which msgspec refused for text that
    is not valid Unicode: a lone surrogate escape is kept as it is, a byte that is not UTF-8
    becomes a lone surrogate (`surrogateescape`). None when it is not a JSON object either."""
    try:
        doc = json.loads(raw.decode("utf-8", "surrogateescape"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not JSON, NaN, nested too deeply
        return None
    return doc if isinstance(doc, dict) else None


def _is_utf8(raw: bytes) -> bool:
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _step(path: str, key: str) -> str:
    if key.isascii() and key.isidentifier():
        return f"{path}.{key[:40]}"
    return f"{path}[{json.dumps(key[:40])}]"  # ASCII, surrogates as escapes


def _surrogate_path(doc: Any) -> str | None:
    """The JSON path of the first string (key or value) in `doc` that UTF-8 cannot encode."""
    todo: list[tuple[str, Any]] = [("$", doc)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path
        elif isinstance(value, dict):
            for key in value:
                if not _encodable(key):
                    return _step(path, key)
            todo.extend((_step(path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            todo.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def _echoed_model(model: Any) -> str:
    if isinstance(model, str) and len(model) <= MAX_MODEL_CHARS and _encodable(model):
        return model
    return ""  # not a model name (the message says why): nothing of it is echoed


def _echoed_metadata(metadata: Any, max_bytes: int) -> tuple[dict[str, Any] | None, str]:
    """`metadata` if it can be echoed within `max_bytes`, else None and a note saying why."""
    if not isinstance(metadata, dict):
        return None, ""
    try:
        size = len(_encoder.encode(metadata))
    except (UnicodeEncodeError, OverflowError, RecursionError, TypeError, ValueError):
        return None, "; `metadata` was not echoed: it is not valid Unicode JSON"
    if size > max_bytes:
        return None, f"; `metadata` ({size} bytes) was not echoed: the limit is {max_bytes}"
    return metadata, ""


def _reject(
    raw: bytes, reason: str, message: str, max_metadata_bytes: int, *, echo_metadata: bool = True
) -> Rejected:
    if len(message) > MAX_ERROR_CHARS:  # keep the end too: msgspec names the field there
        message = message[: MAX_ERROR_CHARS - 205] + " ... " + message[-200:]
    found = _recover(raw)
    if found is None:
        dlq_reason = reason if reason in ("invalid_json", "payload_too_large") else "missing_id"
        return Rejected(reason=dlq_reason, message=message, dlq=True)
    rid, model, metadata = found
    echoed, note = None, ""
    if echo_metadata:
        echoed, note = _echoed_metadata(metadata, max_metadata_bytes)
    return Rejected(
        reason=reason,
        message=message + note,
        dlq=False,
        request_id=rid,
        model=_echoed_model(model),
        metadata=echoed,
    )


def _not_unicode(raw: bytes) -> tuple[str, str] | None:
    """(reason, message) when msgspec refused `raw` for a string that is not valid Unicode,
    naming the first such field; None when that is not why."""
    utf8 = _is_utf8(raw)
    if utf8 and _SURROGATE_ESCAPE.search(raw) is None:
        return None
    doc = _lenient(raw)
    path = _surrogate_path(doc) if doc is not None else None
    if path is None:
        return None
    if utf8:
        return (
            "validation_error",
            f"`{path}` holds a lone UTF-16 surrogate escape: text must be valid Unicode",
        )
    return "invalid_json", f"not valid UTF-8: `{path}` holds bytes that are not UTF-8"


def decode_prompt(
    raw: bytes | None, *, max_bytes: int, max_metadata_bytes: int, extra_bytes: int = 0
) -> Prompt | Rejected:
    """Decode and validate one input record. `extra_bytes`: what the record's key and headers
    take; they count against `max_bytes` with the value (its outcome record carries them)."""
    if not raw:
        return Rejected(reason="invalid_json", message="empty message value", dlq=True)
    if len(raw) + extra_bytes > max_bytes:
        what = f"payload is {len(raw)} bytes"
        if extra_bytes:
            total = len(raw) + extra_bytes
            what = f"record is {total} bytes ({len(raw)} value, {extra_bytes} key and headers)"
        return _reject(
            raw, "payload_too_large", f"{what}; the limit is {max_bytes}", max_metadata_bytes
        )
    try:
        prompt = _prompt_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return _reject(raw, "validation_error", str(exc), max_metadata_bytes)
    except RecursionError:
        return _reject(raw, "invalid_json", "JSON nested too deeply to decode", max_metadata_bytes)
    except UnicodeDecodeError as exc:  # msgspec raises it for a string that is not UTF-8
        reason, why = _not_unicode(raw) or (
            "invalid_json",
            f"not valid UTF-8: {exc.reason} at byte {exc.start}",
        )
        return _reject(raw, reason, why, max_metadata_bytes)
    except msgspec.DecodeError as exc:  # or a lone surrogate escape, or bytes not UTF-8
        not_unicode = _not_unicode(raw)
        if not_unicode is not None:
            return _reject(raw, *not_unicode, max_metadata_bytes)
        return Rejected(reason="invalid_json", message=f"not valid JSON: {exc}", dlq=True)
    broken = _broken_rule(prompt, raw, max_metadata_bytes)
    return prompt if broken is None else broken


def _broken_rule(prompt: Prompt, raw: bytes, max_metadata_bytes: int) -> Rejected | None:
    """The rejection for a decoded prompt that breaks a rule its types cannot say (one of
    `messages` or `prompt`, not empty, metadata within its limit); None when it keeps them."""
    if (prompt.messages is None) == (prompt.prompt is None):
        why = "exactly one of `messages` or `prompt` must be given"
        return _reject(raw, "validation_error", why, max_metadata_bytes)
    if prompt.messages is not None and not prompt.messages:
        return _reject(raw, "validation_error", "`messages` must not be empty", max_metadata_bytes)
    broken = structure_problem(
        prompt.messages, prompt.response_format, prompt.tools, prompt.tool_choice
    )
    if broken is not None:
        return _reject(raw, "validation_error", broken, max_metadata_bytes)
    if prompt.metadata is not None:
        size = len(_encoder.encode(prompt.metadata))
        if size > max_metadata_bytes:
            why = f"`metadata` is {size} bytes; the limit is {max_metadata_bytes}"
            return _reject(raw, "validation_error", why, max_metadata_bytes, echo_metadata=False)
    return None


def schema_of(tp: Any, title: str) -> dict[str, Any]:
    """The published JSON Schema of a contract struct."""
    (ref,), components = msgspec.json.schema_components([tp], ref_template="#/$defs/{name}")
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        **ref,
        "$defs": components,
    }
    return schema


def prompt_schema() -> dict[str, Any]:
    schema = schema_of(Prompt, "llm-worker prompt (topic llm_prompts)")
    schema["$defs"]["Prompt"]["oneOf"] = [{"required": ["messages"]}, {"required": ["prompt"]}]
    return schema


def completion_schema() -> dict[str, Any]:
    return schema_of(Completion, "llm-worker completion (topic llm_completions)")


def provider_request(p: Prompt) -> ProviderRequest:
    """The adapters' request for a prompt (stop as a tuple, messages as theirs)."""
    stop: tuple[str, ...] | None
    if p.stop is None:
        stop = None
    elif isinstance(p.stop, str):
        stop = (p.stop,)
    else:
        stop = tuple(p.stop)
    fmt, tools, tool_choice = convert_structure(p.response_format, p.tools, p.tool_choice)
    return ProviderRequest(
        messages=convert_messages(p.messages) if p.messages is not None else None,
        prompt=p.prompt,
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=stop,
        seed=p.seed,
        response_format=fmt,
        tools=tools,
        tool_choice=tool_choice,
        reasoning_effort=p.reasoning_effort,
    )
