"""The message contracts: prompts in, completions out, dead letters aside.

`decode_prompt` turns raw Kafka bytes into a `Prompt`, or tells the caller why it could not:
`Rejected(dlq=False)` when the input is readable (an `id` was recovered) and deserves an
`error` completion, `Rejected(dlq=True)` when nothing can be answered and the bytes belong in
the dead-letter topic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from adapters.base import Message as ProviderMessage
from adapters.base import ProviderRequest

__all__ = [
    "ChatMessage",
    "Completion",
    "ErrorInfo",
    "Prompt",
    "Rejected",
    "Usage",
    "completion_schema",
    "decode_prompt",
    "encode",
    "prompt_schema",
    "provider_request",
]

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    role: Literal["system", "user", "assistant"]
    content: str


class Prompt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One request on `llm_prompts`. Unknown fields are ignored."""

    id: RequestId
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
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


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None


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
    finish_reason: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    endpoint_name: str | None = None
    usage: Usage | None = None
    latency_ms: float | None = None
    queue_ms: float | None = None
    deduplicated: bool = False
    fallback_used: bool = False
    attempts: int = 0
    error: ErrorInfo | None = None


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


def _recover(raw: bytes) -> _IdOnly | None:
    try:
        return _id_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None  # not JSON, nested past msgspec's depth, or a string that is not UTF-8


def _reject(raw: bytes, reason: str, message: str) -> Rejected:
    found = _recover(raw)
    if found is None:
        dlq_reason = reason if reason in ("invalid_json", "payload_too_large") else "missing_id"
        return Rejected(reason=dlq_reason, message=message, dlq=True)
    return Rejected(
        reason=reason,
        message=message,
        dlq=False,
        request_id=found.id,
        model=found.model if isinstance(found.model, str) else "",
        metadata=found.metadata if isinstance(found.metadata, dict) else None,
    )


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
        return _reject(raw, "payload_too_large", f"{what}; the limit is {max_bytes}")
    try:
        prompt = _prompt_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return _reject(raw, "validation_error", str(exc))
    except RecursionError:
        return _reject(raw, "invalid_json", "JSON nested too deeply to decode")
    except UnicodeDecodeError as exc:  # msgspec raises it for a string that is not UTF-8
        return _reject(raw, "invalid_json", f"not valid UTF-8: {exc.reason} at byte {exc.start}")
    except msgspec.DecodeError as exc:
        return Rejected(reason="invalid_json", message=f"not valid JSON: {exc}", dlq=True)
    if (prompt.messages is None) == (prompt.prompt is None):
        return _reject(
            raw, "validation_error", "exactly one of `messages` or `prompt` must be given"
        )
    if prompt.messages is not None and not prompt.messages:
        return _reject(raw, "validation_error", "`messages` must not be empty")
    if prompt.metadata is not None and len(_encoder.encode(prompt.metadata)) > max_metadata_bytes:
        rej = _reject(
            raw, "validation_error", f"`metadata` is larger than {max_metadata_bytes} bytes"
        )
        return msgspec.structs.replace(rej, metadata=None)  # too big to echo back
    return prompt


def _schema(tp: Any, title: str) -> dict[str, Any]:
    (ref,), components = msgspec.json.schema_components([tp], ref_template="#/$defs/{name}")
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        **ref,
        "$defs": components,
    }
    return schema


def prompt_schema() -> dict[str, Any]:
    schema = _schema(Prompt, "llm-worker prompt (topic llm_prompts)")
    schema["$defs"]["Prompt"]["oneOf"] = [{"required": ["messages"]}, {"required": ["prompt"]}]
    return schema


def completion_schema() -> dict[str, Any]:
    return _schema(Completion, "llm-worker completion (topic llm_completions)")


def provider_request(p: Prompt) -> ProviderRequest:
    """The adapters' request for a prompt (stop as a tuple, messages as theirs)."""
    stop: tuple[str, ...] | None
    if p.stop is None:
        stop = None
    elif isinstance(p.stop, str):
        stop = (p.stop,)
    else:
        stop = tuple(p.stop)
    return ProviderRequest(
        messages=(
            tuple(ProviderMessage(m.role, m.content) for m in p.messages)
            if p.messages is not None
            else None
        ),
        prompt=p.prompt,
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=stop,
        seed=p.seed,
    )
