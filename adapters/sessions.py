"""One pooled HTTP client per endpoint origin (scheme://host:port).

Sessions are created lazily by `get()` inside the running event loop; the constructor does
no I/O. With `http_client="aiohttp"` (the default) each is an `aiohttp.ClientSession` owning a
keep-alive `TCPConnector` limited per host, with a DNS cache and no cookie jar (provider APIs
are stateless); with `"h1"` (`LLM_WORKER_HTTP_CLIENT=h1`) it is an `adapters.h1.H1Client` with
the same limit and keep-alive (no proxies from the environment, no compression). `close()` is
idempotent. `max_response_bytes` is the cap on one answer read through the pool's sessions
(each attempt's `Target` carries it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Literal

import aiohttp
from yarl import URL

from ._body import DEFAULT_MAX_RESPONSE_BYTES
from .h1 import H1Client
from .urls import redact_url

__all__ = ["SessionPool"]

_DEFAULT_USER_AGENT = "llm-worker/0.1 (+aiohttp)"
_H1_USER_AGENT = "llm-worker/0.1 (+h1)"

HTTPClientName = Literal["aiohttp", "h1"]
PooledSession = aiohttp.ClientSession | H1Client


class SessionPool:
    def __init__(
        self,
        *,
        limit_per_host: int = 256,
        keepalive_timeout: float = 30.0,
        ttl_dns_cache: int = 300,
        user_agent: str = _DEFAULT_USER_AGENT,
        trust_env: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        http_client: HTTPClientName = "aiohttp",
    ) -> None:
        if http_client not in ("aiohttp", "h1"):
            raise ValueError("http_client must be aiohttp or h1")
        if limit_per_host < 1:
            raise ValueError("limit_per_host must be at least 1")
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        self.max_response_bytes = max_response_bytes
        self.http_client = http_client
        self._limit_per_host = limit_per_host
        self._keepalive_timeout = keepalive_timeout
        self._ttl_dns_cache = ttl_dns_cache
        self._user_agent = user_agent
        self._headers = {"User-Agent": user_agent}
        self._trust_env = trust_env
        self._by_origin: dict[str, PooledSession] = {}
        self._by_endpoint: dict[str, PooledSession] = {}
        self._origin_of: dict[str, str] = {}
        self._used: dict[str, float] = {}  # origin -> last use (monotonic)
        self._created = 0
        self._closed = False

    @staticmethod
    def origin(endpoint: str) -> str:
        """`scheme://host:port` of an endpoint URL; ValueError when it has no scheme or host
        (its message shows the URL with any credentials masked)."""
        try:
            url = URL(endpoint)
            ok = url.absolute and url.scheme in ("http", "https") and bool(url.host)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"endpoint is not an absolute http(s) URL: {redact_url(endpoint)!r}")
        return str(url.origin())

    def get(self, endpoint: str) -> PooledSession:
        """The session for the endpoint's origin, created on first use (call inside the loop)."""
        session = self._by_endpoint.get(endpoint)
        if session is not None and not session.closed:
            self._used[self._origin_of[endpoint]] = time.monotonic()
            return session
        if self._closed:
            raise RuntimeError("SessionPool is closed")
        origin = self.origin(endpoint)
        session = self._by_origin.get(origin)
        if session is None or session.closed:
            session = self._new_session()
            self._by_origin[origin] = session
            self._created += 1
        self._by_endpoint[endpoint] = session
        self._origin_of[endpoint] = origin
        self._used[origin] = time.monotonic()
        return session

    def _new_session(self) -> PooledSession:
        if self.http_client == "h1":
            return H1Client(
                limit_per_origin=self._limit_per_host,
                keepalive_s=self._keepalive_timeout,
                max_body=self.max_response_bytes,
                user_agent=(
                    _H1_USER_AGENT if self._user_agent == _DEFAULT_USER_AGENT else self._user_agent
                ),
            )
        connector = aiohttp.TCPConnector(
            limit=self._limit_per_host,
            limit_per_host=self._limit_per_host,
            keepalive_timeout=self._keepalive_timeout,
            ttl_dns_cache=self._ttl_dns_cache,
        )
        return aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=self._trust_env,
        )

    async def forget_idle(self, idle_s: float) -> int:
        """Close the sessions of origins not used for `idle_s` seconds (rows removed or moved
        elsewhere); returns how many were closed. Memory stays bounded under endpoint churn."""
        cutoff = time.monotonic() - idle_s
        stale = [o for o, used in self._used.items() if used < cutoff]
        sessions = [s for o in stale if (s := self._by_origin.pop(o, None)) is not None]
        for origin in stale:
            del self._used[origin]
        for endpoint in [e for e, o in self._origin_of.items() if o in stale]:
            self._by_endpoint.pop(endpoint, None)
            del self._origin_of[endpoint]
        if sessions:
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        return len(sessions)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, timeout: float = 5.0) -> None:
        """Close every session (at most `timeout` seconds); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        sessions = [s for s in self._by_origin.values() if not s.closed]
        self._by_origin.clear()
        self._by_endpoint.clear()
        if not sessions:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    def stats(self) -> dict[str, int]:
        """Plain counters for telemetry."""
        open_sessions = sum(1 for s in self._by_origin.values() if not s.closed)
        return {
            "sessions": open_sessions,
            "sessions_created": self._created,
            "endpoints": len(self._by_endpoint),
            "limit_per_host": self._limit_per_host,
            "h1": int(self.http_client == "h1"),
            "closed": int(self._closed),
        }

    async def __aenter__(self) -> SessionPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
