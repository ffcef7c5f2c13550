"""The seam between the adapters and an HTTP client: aiohttp (the default) or `adapters.h1`.

    HTTPClient     what an attempt needs: `post_read` (a POST and its answer, within a byte
                   cap) and `stream_post` (a POST whose answer is read as it comes)
    StreamReply    that streamed answer: status, headers, `readany`, `read_capped`, `close`
    Session        what an adapter is handed: an `aiohttp.ClientSession` or an `HTTPClient`
    http_of(s)     the `HTTPClient` of a session (an aiohttp one wrapped in `AiohttpClient`)

`LLM_WORKER_HTTP_CLIENT` picks the client `SessionPool.get` hands out; the adapters see no
difference. Transport failures are left as the client raises them: `HTTPAdapter` classifies
aiohttp's and h1's alike (h1's are `TimeoutError`, `ConnectionError`, `ValueError` subclasses,
and `H1ProtocolError` for bytes that are not HTTP).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import lru_cache
from typing import Protocol

import aiohttp
from yarl import URL

from ._body import read_body

__all__ = [
    "AiohttpClient",
    "HTTPClient",
    "Reply",
    "Session",
    "StreamReply",
    "http_of",
    "timeout_for",
]

Reply = tuple[int, Mapping[str, str], bytes, bool]
"""status, headers, body, and whether the body is whole (False: over the cap, its first bytes)."""


class StreamReply(Protocol):
    """An answer read as it comes (inside `stream_post`'s `async with`)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_type(self) -> str: ...

    async def readany(self, idle_s: float | None) -> bytes:
        """The bytes received since the last read, b"" at the end; `TimeoutError` when none
        come within `idle_s` (None: no bound of its own)."""
        ...

    async def read_capped(self, cap: int) -> tuple[bytes, bool]:
        """The rest of the body and True, or its first bytes and False past `cap` bytes."""
        ...

    def close(self) -> None:
        """Drop the connection (it is not reused)."""
        ...


class HTTPClient(Protocol):
    async def post_read(
        self, url: URL, body: bytes, headers: Mapping[str, str], timeout_s: float, cap: int
    ) -> Reply:
        """POST and read the answer within `timeout_s` and `cap` bytes."""
        ...

    def stream_post(
        self, url: URL, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> AbstractAsyncContextManager[StreamReply]:
        """POST; the answer's status and headers within `timeout_s`, then its body as it comes
        (no total bound). The connection is reused only when the body was read to its end."""
        ...


Session = aiohttp.ClientSession | HTTPClient


@lru_cache(maxsize=1024)
def timeout_for(timeout_ms: int) -> aiohttp.ClientTimeout:
    seconds = max(timeout_ms, 1) / 1000.0
    return aiohttp.ClientTimeout(total=seconds, connect=seconds)


_STREAM = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
"""A stream's own timeouts are its attempt's: the row's `timeout_ms` to the answer's headers,
then `stream_idle_ms` between reads; no total (a long answer streams as long as it flows,
bounded by the request's deadline)."""


class _AiohttpStream:
    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    async def readany(self, idle_s: float | None) -> bytes:
        async with asyncio.timeout(idle_s):
            return await self._resp.content.readany()

    async def read_capped(self, cap: int) -> tuple[bytes, bool]:
        return await read_body(self._resp, cap)

    def close(self) -> None:
        self._resp.close()


class AiohttpClient:
    """`HTTPClient` over an `aiohttp.ClientSession` (`SessionPool` configures it)."""

    __slots__ = ("session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def post_read(
        self, url: URL, body: bytes, headers: Mapping[str, str], timeout_s: float, cap: int
    ) -> Reply:
        async with self.session.post(
            url,
            data=body,
            headers=headers,
            timeout=timeout_for(round(timeout_s * 1000)),
            allow_redirects=False,
        ) as resp:
            payload, whole = await read_body(resp, cap)
            return resp.status, resp.headers, payload, whole

    @asynccontextmanager
    async def stream_post(
        self, url: URL, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> AsyncIterator[StreamReply]:
        async with asyncio.timeout(timeout_s):  # to the headers
            resp = await self.session.post(
                url, data=body, headers=headers, timeout=_STREAM, allow_redirects=False
            )
        async with resp:
            yield _AiohttpStream(resp)


def http_of(session: Session) -> HTTPClient:
    """The `HTTPClient` of what an adapter was handed."""
    if isinstance(session, aiohttp.ClientSession):
        return AiohttpClient(session)
    return session
