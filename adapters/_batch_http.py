"""What both batch clients share: a session of their own, one HTTP call, typed errors.

Batch calls are rare (a submit, a poll every few minutes, one download), so a client opens
its own `aiohttp.ClientSession` on first use instead of borrowing the worker's pooled one.
No call has a total deadline (a results file may be hundreds of megabytes); a connection
that takes longer than `TIMEOUT_S` to open, or goes that long without a byte, fails.

Failures are classified as an online attempt's are, with the online adapter's own rules: a
non-2xx answer by its status and body (`HTTPAdapter.read_error`, `error_class`), a timeout as
`ProviderTimeout`, a refused or reset connection as `ConnectionFailed`. The API key travels
in headers only, redirects are not followed (a header would go along), and it is scrubbed
from every message (`HTTPAdapter.error`, `adapters.scrub`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import aiohttp
import msgspec
from yarl import URL

from ._body import MAX_JSON_DEPTH, too_deep
from ._http import ErrorBody, HTTPAdapter, Malformed, describe, header, snippet
from .base import ProviderResult, Target
from .batch import BatchLimits
from .errors import (
    BadRequest,
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
    ServerError,
)
from .retry import parse_retry_after
from .scrub import scrub_bytes

__all__ = ["TIMEOUT_S", "BatchHTTP", "check_size", "jsonl"]

TIMEOUT_S = 60.0
"""Connect, and silence while reading: a batch API answers its small calls in well under a
second, and streams a results file without pauses."""

T = TypeVar("T")

_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=TIMEOUT_S, sock_read=TIMEOUT_S)


class BatchHTTP:
    """The HTTP calls of one batch client, errors named after `adapter` (its provider)."""

    def __init__(self, adapter: HTTPAdapter) -> None:
        self.adapter = adapter
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def call(
        self,
        target: Target,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str],
        body: bytes | aiohttp.FormData | None = None,
    ) -> bytes:
        """The body of a 2xx answer; anything else raises the `ProviderError` it means."""
        try:
            async with self._open().request(
                method, url, data=body, headers=dict(headers), allow_redirects=False
            ) as resp:
                payload = await resp.read()
                if 200 <= resp.status < 300:
                    return payload
                raise self._refusal(target, resp.status, payload, resp.headers)
        except ProviderError:
            raise
        except TimeoutError as exc:
            why = f"no answer within {TIMEOUT_S:.0f} s"
            raise self.adapter.error(ProviderTimeout, target, why) from exc
        except aiohttp.InvalidURL:  # its text is the URL, credentials and all
            raise self.adapter.error(BadRequest, target, "invalid endpoint URL") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise self.adapter.error(ConnectionFailed, target, describe(exc)) from exc
        except aiohttp.ClientError as exc:
            raise self.adapter.error(ServerError, target, describe(exc)) from exc
        except ValueError as exc:  # aiohttp refused to send it (a header, an IDNA host...)
            why = f"the request could not be sent: {describe(exc)}"
            raise self.adapter.error(BadRequest, target, why) from None

    def _refusal(
        self, target: Target, status: int, payload: bytes, headers: Mapping[str, str]
    ) -> ProviderError:
        error = self.answer_error(
            target, status, payload, header(headers, self.adapter.request_id_headers)
        )
        error.retry_after = parse_retry_after(headers)
        return error

    def answer_error(
        self, target: Target, status: int, payload: bytes, request_id: str | None
    ) -> ProviderError:
        """The error a non-2xx answer means (a call's, or one request's inside a batch),
        classified by status and body as the online adapter would, the key scrubbed."""
        key = target.api_key.reveal() if target.api_key is not None else None
        payload = scrub_bytes(payload, key)  # before any excerpt is cut
        try:
            info = self.adapter.read_error(payload)
        except (ValueError, TypeError, LookupError):
            info = ErrorBody(snippet(payload), "")
        return self.adapter.error(
            self.adapter.error_class(status, info),
            target,
            info.message or f"HTTP {status}",
            status=status,
            request_id=request_id or info.request_id,
        )

    def answer(self, target: Target, payload: bytes, request_id: str | None) -> ProviderResult:
        """One request's answer read by the online adapter's parser; a body it cannot read is
        a `ServerError`, as a live call's would be."""
        try:
            if too_deep(payload):
                raise Malformed(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            return self.adapter.parse_result(target, payload, request_id, {})
        except ProviderError:
            raise
        except (Malformed, msgspec.MsgspecError, ValueError, LookupError, TypeError) as exc:
            key = target.api_key.reveal() if target.api_key is not None else None
            excerpt = snippet(scrub_bytes(payload, key)) or "empty body"
            why = f"malformed response: {describe(exc)}: {excerpt}"
            raise self.adapter.error(ServerError, target, why, request_id=request_id) from exc

    async def send(self, target: Target, method: str, url: URL, body: bytes | None = None) -> bytes:
        """`call` with the online adapter's headers (its key among them); a call without a
        body sends no Content-Type."""
        headers = self.adapter.headers_for(target)
        for name in [k for k in headers if k.lower() == "content-type"] if body is None else []:
            del headers[name]
        return await self.call(target, method, url, headers=headers, body=body)

    def decoded(self, target: Target, decode: Callable[[bytes], T], payload: bytes, what: str) -> T:
        """`decode(payload)`; a payload it refuses is a malformed `what`."""
        try:
            return decode(payload)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise self.malformed(target, what, exc) from exc

    def malformed(self, target: Target, what: str, exc: Exception) -> ProviderError:
        """A 2xx answer that is not what the provider documents (`what` names it)."""
        return self.adapter.error(ServerError, target, f"malformed {what}: {exc}")

    def refuse(self, target: Target, why: str) -> ProviderError:
        """A `BadRequest` about the job itself (too big, empty, not finished)."""
        return self.adapter.error(BadRequest, target, why)


def check_size(http: BatchHTTP, target: Target, lines: list[bytes], limits: BatchLimits) -> None:
    """Refuse a job that is empty or over the provider's limits, before anything is sent."""
    if not lines:
        raise http.refuse(target, "a batch job needs at least one request")
    if len(lines) > limits.max_requests:
        raise http.refuse(
            target, f"{len(lines)} requests: a batch job holds at most {limits.max_requests}"
        )
    size = sum(len(line) for line in lines)
    if size > limits.max_bytes:
        raise http.refuse(
            target, f"{size} bytes of requests: a batch job holds at most {limits.max_bytes}"
        )


def jsonl(payload: bytes) -> list[bytes]:
    """The non-blank lines of a JSONL file."""
    return [line for line in payload.splitlines() if line.strip()]
