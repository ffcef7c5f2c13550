"""What every HTTP adapter shares: one POST per attempt, typed errors, no key in any message.

    HTTPAdapter       the attempt: build the body → POST → parse, or classify the failure.
                      Subclasses supply `url_for`, `headers_for`, `build_body`, `parse_result`
                      and, when the provider's error body is special, `read_error`/`error_class`.
    ErrorBody         what an error body said: a short message, text to classify on, hints.
    Malformed         raised by `parse_result` for a 2xx body that is not a valid answer.

Transport failures are translated at this boundary (`raise ... from exc`): timeouts become
`ProviderTimeout`, refused/reset connections `ConnectionFailed`. `CancelledError` passes through.
The HTTP client is aiohttp's or `adapters.h1`'s, through the seam of `adapters.http_client`
(`LLM_WORKER_HTTP_CLIENT`); both clients' failures are classified alike.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple

import aiohttp
import msgspec
from yarl import URL

from ._body import MAX_JSON_DEPTH, too_deep
from .base import (
    Message,
    OnDelta,
    ProviderRequest,
    ProviderResult,
    Target,
)
from .errors import (
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    ProviderError,
    ProviderTimeout,
    ResponseTooLarge,
    ServerError,
    error_for_status,
)
from .features import unsupported_message
from .h1 import H1ProtocolError
from .http_client import Session, StreamReply, http_of, timeout_for
from .retry import MAX_RETRY_AFTER, parse_retry_after
from .scrub import scrub, scrub_bytes
from .sse import SSEError, SSEEvent, SSEParser
from .streaming import Assembler, StreamRefused, whole_delta
from .urls import url_secrets

__all__ = [
    "CONTEXT_HINTS",
    "FILTER_HINTS",
    "ErrorBody",
    "HTTPAdapter",
    "Malformed",
    "cap_tokens",
    "decode_json",
    "json_error",
    "shorten",
    "snippet",
    "strip_v1",
    "timeout_for",
]

SNIPPET = 200

CONTEXT_HINTS: tuple[str, ...] = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
)
FILTER_HINTS: tuple[str, ...] = ("content_filter", "content_policy", "content management policy")

_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which JSON parsers may ignore (RFC 8259)
_TWO_AUTHS = (
    "the endpoint URL carries credentials (user:password@) and the row's api_key_secret sets "
    "the Authorization header too: keep one of them"
)
_TAGS = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_decode_any = msgspec.json.Decoder().decode


class Malformed(Exception):
    """A 2xx body that decodes but is not an answer (no choices, no candidates...)."""


_UNREADABLE = (
    Malformed,
    msgspec.MsgspecError,
    ValueError,
    LookupError,
    TypeError,
    RecursionError,
    SSEError,
)
"""What a body the provider got wrong raises while it is parsed: bad JSON or UTF-8, a wrong
shape, a missing key, nesting past the recursion limit. A provider error, never an
`internal_error`."""


class ErrorBody(NamedTuple):
    message: str  # for humans: short, single line
    classify_on: str  # lower-cased text the class refinement looks at
    kind: str = ""  # the provider's own error type / status, as sent
    request_id: str | None = None  # when the body carries one
    retry_after: float | None = None  # a hint from the body (seconds), used without a header


_SERVER_FAULTS = (aiohttp.ClientError, H1ProtocolError)
"""What a client raises for an answer that is not HTTP it can read (after the connection,
payload and URL errors are taken out): the server's fault, retried like a 5xx."""


def _timeout_s(target: Target) -> float:
    return max(target.timeout_ms, 1) / 1000.0


def _idle_s(target: Target) -> float:
    return max(target.stream_idle_ms, 1) / 1000.0


def cap_tokens(asked: int | None, cap: int | None) -> int | None:
    """The request's max_tokens limited by the target's cap; the cap alone when not asked."""
    if asked is None:
        return cap
    if cap is None:
        return asked
    return min(asked, cap)


def strip_v1(endpoint: str) -> str:
    """The endpoint without trailing slashes or a trailing `/v1` (so `/v1` is never doubled)."""
    base = endpoint.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


def _scrub(payload: bytes, target: Target) -> bytes:
    """The body with the target's API key (echoed by some error pages) replaced by `***`, in
    any encoding (`adapters.scrub`); `error()` takes out the pieces a cut leaves."""
    return scrub_bytes(payload, target.api_key.reveal() if target.api_key else None)


def shorten(text: str) -> str:
    return text if len(text) <= SNIPPET else text[: SNIPPET - 3].rstrip() + "..."


def snippet(body: bytes) -> str:
    """A short, single-line, tag-free excerpt of an unparseable body."""
    text = body[: SNIPPET * 8].decode("utf-8", errors="replace")
    return shorten(_SPACE.sub(" ", _TAGS.sub(" ", text)).strip())


def decode_json(body: bytes) -> Any:
    """The decoded JSON document, or None when the body is empty, not JSON, or nested deeper
    than `MAX_JSON_DEPTH`."""
    if not body or too_deep(body):
        return None
    try:
        return _decode_any(body.removeprefix(_BOM))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(value)
    return str(msgspec.json.encode(value), "utf-8")


def json_error(body: bytes) -> ErrorBody:
    """The common error shapes; anything else becomes a snippet.

    OpenAI's `{"error": {"message", "type", "code"}}`, Anthropic's `{"type": "error", "error":
    {...}, "request_id"}`, vLLM's flat `{"message", "type", "code"}`, TGI's `{"error": "...",
    "error_type": "..."}` and FastAPI's `{"detail": ...}`.
    """
    doc = decode_json(body)
    if isinstance(doc, dict):
        err: Any = doc.get("error", doc)
        if isinstance(err, str | list):
            err = {"message": err, "type": doc.get("error_type")}
        if isinstance(err, dict):
            message = _text(err.get("message") or doc.get("detail"))
            kind, code = err.get("type"), err.get("code")
            tags = "/".join(str(t) for t in (kind, code) if t not in (None, ""))
            text = shorten(message)
            if tags:
                text = f"{text} ({tags})" if text else tags
            if text:
                rid = doc.get("request_id")
                return ErrorBody(
                    text,
                    f"{message} {tags}".lower(),
                    kind=str(kind) if kind else "",
                    request_id=rid if isinstance(rid, str) and rid else None,
                )
    excerpt = snippet(body)
    return ErrorBody(excerpt, excerpt.lower())


def describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def header(headers: Mapping[str, str], names: Iterable[str]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


class HTTPAdapter:
    """One attempt against one provider: subclasses describe the wire format."""

    name = ""
    default_endpoint: ClassVar[str] = ""
    request_id_headers: ClassVar[tuple[str, ...]] = ("x-request-id",)
    context_hints: ClassVar[tuple[str, ...]] = CONTEXT_HINTS
    filter_hints: ClassVar[tuple[str, ...]] = FILTER_HINTS
    features: ClassVar[frozenset[str]] = frozenset()
    """The optional request fields this wire format carries (`adapters.features`)."""

    # -- the wire format (overridden per provider) --------------------------------------------

    def endpoint_for(self, target: Target) -> str:
        """The base URL an attempt for `target` goes to (for `SessionPool.get`)."""
        return target.endpoint or self.default_endpoint

    def url_for(self, endpoint: str, target: Target) -> URL:
        raise NotImplementedError

    def headers_for(self, target: Target) -> dict[str, str]:
        raise NotImplementedError

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        raise NotImplementedError

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        """A 2xx body → result. Raise `Malformed`/`msgspec.DecodeError` for a bad body."""
        raise NotImplementedError

    def read_error(self, payload: bytes) -> ErrorBody:
        return json_error(payload)

    # streaming (overridden by providers that stream): the URL, the body, the event reader
    def stream_url_for(self, endpoint: str, target: Target) -> URL:
        return self.url_for(endpoint, target)

    def build_stream_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The body of a streaming call; by default the plain one (the answer comes whole and
        is given as one delta)."""
        return self.build_body(target, request)

    def assembler(self, target: Target, request: ProviderRequest) -> Assembler | None:
        """The reader of this provider's event stream (None: it does not stream)."""
        return None

    def error_class(self, status: int, info: ErrorBody) -> type[ProviderError]:
        """The class for a failed call: by status, refined by the body for terminal 4xx."""
        cls = error_for_status(status)
        if issubclass(cls, BadRequest):
            if any(hint in info.classify_on for hint in self.context_hints):
                return ContextLengthExceeded
            if any(hint in info.classify_on for hint in self.filter_hints):
                return ContentFiltered
        return cls

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        """Why `request` cannot go to `target` as asked (the field and the provider), or None."""
        return unsupported_message(self.features, target, request)

    # -- the attempt ----------------------------------------------------------------------------

    def messages(self, target: Target, request: ProviderRequest) -> tuple[Message, ...]:
        """The conversation: the request's messages, or its prompt as one user message."""
        if request.messages is not None:
            return request.messages
        if request.prompt is not None:
            return (Message("user", request.prompt),)
        raise self.error(BadRequest, target, "request has neither messages nor prompt")

    async def complete(
        self, session: Session, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        """One attempt. Raises `adapters.errors.ProviderError` subclasses, nothing else."""
        url, body, headers = self._request(target, request)
        status, answer_headers, payload, whole = await self._post(
            session, target, url, body, headers
        )
        request_id = header(answer_headers, self.request_id_headers)
        if 200 <= status < 300:
            if not whole:
                raise self._too_large(target, status, request_id)
            return self._answer(target, payload, status, request_id, answer_headers)
        raise self._refusal(target, status, payload, answer_headers, request_id)

    async def stream(
        self,
        session: Session,
        target: Target,
        request: ProviderRequest,
        on_delta: OnDelta,
    ) -> ProviderResult:
        """One streaming attempt (`Adapter.stream`). A provider without a stream reader, or an
        answer that comes back whole (not `text/event-stream`), gives its answer as one delta."""
        assembler = self.assembler(target, request)
        if assembler is None:
            result = await self.complete(session, target, request)
            on_delta(whole_delta(result))
            return result
        url, body, headers = self._request(target, request, stream=True)
        try:
            async with http_of(session).stream_post(url, body, headers, _timeout_s(target)) as resp:
                request_id = header(resp.headers, self.request_id_headers)
                if not 200 <= resp.status < 300 or resp.content_type != "text/event-stream":
                    return await self._not_a_stream(resp, target, request_id, on_delta)
                return await self._read_stream(resp, target, assembler, on_delta, request_id)
        except ProviderError:
            raise
        except TimeoutError as exc:
            raise self.error(
                ProviderTimeout, target, f"no answer within {target.timeout_ms} ms"
            ) from exc
        except aiohttp.InvalidURL:
            raise self.error(BadRequest, target, "invalid endpoint URL") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise self.error(ConnectionFailed, target, describe(exc)) from exc
        except _SERVER_FAULTS as exc:
            raise self.error(ServerError, target, describe(exc)) from exc
        except ValueError as exc:
            why = f"the request could not be sent: {describe(exc)}"
            raise self.error(BadRequest, target, why) from None

    async def _not_a_stream(
        self,
        resp: StreamReply,
        target: Target,
        request_id: str | None,
        on_delta: OnDelta,
    ) -> ProviderResult:
        """An error answer, or a whole one (given as one delta), read within the byte cap and
        the row's timeout."""
        async with asyncio.timeout(max(target.timeout_ms, 1) / 1000):
            payload, whole = await resp.read_capped(target.max_response_bytes)
        if not 200 <= resp.status < 300:
            raise self._refusal(target, resp.status, payload, resp.headers, request_id)
        if not whole:
            raise self._too_large(target, resp.status, request_id)
        result = self._answer(target, payload, resp.status, request_id, resp.headers)
        on_delta(whole_delta(result))
        return result

    async def _read_stream(
        self,
        resp: StreamReply,
        target: Target,
        asm: Assembler,
        on_delta: OnDelta,
        request_id: str | None,
    ) -> ProviderResult:
        """Events read as they come, each one's delta given on; the whole answer at the end."""
        cap = target.max_response_bytes
        parser = SSEParser()
        read = 0
        try:
            while data := await self._next_read(resp, target, request_id):
                read += len(data)
                if read > cap:
                    resp.close()
                    raise self._too_large(target, resp.status, request_id)
                if _take(parser.feed(data), asm, on_delta):
                    await _finish_response(resp)
                    break
            else:
                last = parser.close()
                _take([] if last is None else [last], asm, on_delta)
        except StreamRefused as refused:
            raise self._refusal(
                target, refused.status or 500, refused.body, resp.headers, request_id
            ) from None
        except _UNREADABLE as exc:
            raise self.error(
                ServerError,
                target,
                f"malformed stream: {shorten(describe(exc))}",
                status=resp.status,
                request_id=request_id,
            ) from exc
        if not asm.complete:  # closed, or `[DONE]`, before the provider said how it finished
            raise self.error(
                ConnectionFailed,
                target,
                "the stream ended before the answer was complete",
                status=resp.status,
                request_id=request_id,
            )
        return asm.result(request_id)

    async def _next_read(self, resp: StreamReply, target: Target, request_id: str | None) -> bytes:
        """The next bytes of the stream (b"" at its end); a `ProviderTimeout` when none come
        within `target.stream_idle_ms`: the stream stalled."""
        try:
            return await resp.readany(_idle_s(target))
        except TimeoutError:
            raise self.error(
                ProviderTimeout,
                target,
                f"the stream stalled: no event within {target.stream_idle_ms} ms",
                status=resp.status,
                request_id=request_id,
            ) from None

    def _too_large(self, target: Target, status: int, request_id: str | None) -> ProviderError:
        return self.error(
            ResponseTooLarge,
            target,
            f"the answer is larger than {target.max_response_bytes} bytes "
            "(LLM_WORKER_MAX_RESPONSE_BYTES)",
            status=status,
            request_id=request_id,
        )

    def _request(
        self, target: Target, request: ProviderRequest, *, stream: bool = False
    ) -> tuple[URL, bytes, dict[str, str]]:
        """The URL, body and headers of the POST, or a `BadRequest` saying why there is none."""
        endpoint = self.endpoint_for(target)
        if not endpoint:
            raise self.error(BadRequest, target, "target has no endpoint")
        try:
            if stream:
                body = self.build_stream_body(target, request)
            else:
                body = self.build_body(target, request)
        except (ValueError, TypeError) as exc:  # text JSON cannot carry (a lone surrogate...)
            why = f"the request cannot be encoded as JSON: {describe(exc)}"
            raise self.error(BadRequest, target, why) from None
        try:
            url = (
                self.stream_url_for(endpoint, target) if stream else self.url_for(endpoint, target)
            )
        except ValueError:
            raise self.error(BadRequest, target, "invalid endpoint URL") from None
        headers = self.headers_for(target)
        if (url.raw_user or url.raw_password) and any(
            name.lower() == "authorization" for name in headers
        ):
            raise self.error(BadRequest, target, _TWO_AUTHS)
        return url, body, headers

    async def _post(
        self,
        session: Session,
        target: Target,
        url: URL,
        body: bytes,
        headers: dict[str, str],
    ) -> tuple[int, Mapping[str, str], bytes, bool]:
        """Send it and read the answer up to the cap: status, headers, body, whether whole.
        Transport failures become the provider error that classifies them."""
        try:
            return await http_of(session).post_read(
                url, body, headers, _timeout_s(target), target.max_response_bytes
            )
        except TimeoutError as exc:
            raise self.error(
                ProviderTimeout, target, f"no answer within {target.timeout_ms} ms"
            ) from exc
        except aiohttp.InvalidURL:  # its text is the URL, credentials and all
            raise self.error(BadRequest, target, "invalid endpoint URL") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise self.error(ConnectionFailed, target, describe(exc)) from exc
        except _SERVER_FAULTS as exc:
            raise self.error(ServerError, target, describe(exc)) from exc
        except ValueError as exc:  # aiohttp refused to send it: a header, an IDNA host...
            why = f"the request could not be sent: {describe(exc)}"
            raise self.error(BadRequest, target, why) from None

    def _refusal(
        self,
        target: Target,
        status: int,
        payload: bytes,
        headers: Mapping[str, str],
        request_id: str | None,
    ) -> ProviderError:
        """The error a non-2xx answer means, classified by status and body, key scrubbed."""
        # scrub before any excerpt is cut: a key split by the cut would survive a later replace
        payload = _scrub(payload, target)
        try:
            info = self.read_error(payload)
        except _UNREADABLE:  # classified by status alone
            info = ErrorBody(snippet(payload), "")
        retry_after = parse_retry_after(headers)
        if retry_after is None and info.retry_after is not None:
            retry_after = min(max(info.retry_after, 0.0), MAX_RETRY_AFTER)
        return self.error(
            self.error_class(status, info),
            target,
            info.message or f"HTTP {status}",
            status=status,
            request_id=request_id or info.request_id,
            retry_after=retry_after,
        )

    def _answer(
        self,
        target: Target,
        payload: bytes,
        status: int,
        request_id: str | None,
        headers: Mapping[str, str],
    ) -> ProviderResult:
        """A 2xx body parsed, or a retryable `ServerError` saying how it is malformed."""
        try:
            payload = payload.removeprefix(_BOM)
            if too_deep(payload):
                raise Malformed(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            return self.parse_result(target, payload, request_id, headers)
        except _UNREADABLE as exc:
            # the provider's fault, not the request's (a truncated transfer, a broken
            # proxy): retried like a 5xx, so a glitch never becomes an error completion
            excerpt = snippet(_scrub(payload, target)) or "empty body"
            if isinstance(exc, Malformed | RecursionError):
                excerpt = f"{exc}: {excerpt}" if str(exc) else excerpt
            raise self.error(
                ServerError,
                target,
                f"malformed response: {excerpt}",
                status=status,
                request_id=request_id,
            ) from exc

    def error(
        self,
        cls: type[ProviderError],
        target: Target,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> ProviderError:
        """An error of `cls` for this attempt, with the target's API key and the credentials
        of its endpoint URL scrubbed out (a library's text may quote either)."""
        secrets = list(url_secrets(self.endpoint_for(target)))
        if target.api_key is not None:
            secrets.insert(0, target.api_key.reveal())
        for secret in secrets:
            if secret:
                message = scrub(message, secret)
                if request_id:
                    request_id = scrub(request_id, secret)
        return cls(
            message,
            provider=self.name,
            model=target.model,
            status=status,
            request_id=request_id,
            retry_after=retry_after,
        )


def _take(events: Iterable[SSEEvent], asm: Assembler, on_delta: OnDelta) -> bool:
    """Read `events` into `asm`, each delta given on; True once it says to stop reading."""
    for ev in events:
        delta = asm.event(ev)
        if delta is not None:
            on_delta(delta)
        if asm.done:
            return True
    return False


DRAIN_S = 0.05
"""How long a stream's response is read on after the provider said it is done (`[DONE]`): a
server that then ends the response lets its connection be used again; one that keeps it open
past this loses the connection (closed), not the answer."""
_DRAIN_BYTES = 64 * 1024


async def _finish_response(resp: StreamReply) -> None:
    """After the last event that matters: read what is left up to its end, so the connection
    goes back to the pool; close it when the server does not end the response at once."""
    read = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            while chunk := await resp.readany(None):
                read += len(chunk)
                if read > _DRAIN_BYTES:
                    break
            else:
                return  # at the end: released with the connection reusable
    except TimeoutError:
        pass
    resp.close()
