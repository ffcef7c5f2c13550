"""A lean keep-alive HTTP/1.1 client for the adapters' POSTs (`LLM_WORKER_HTTP_CLIENT=h1`).

    client = H1Client(limit_per_origin=256, keepalive_s=30.0)
    resp = await client.post(url, body, headers, timeout_s)   # Response(status, headers, body)
    async with client.stream_post(url, body, headers, timeout_s) as resp:
        async for piece in resp.iter_chunks(idle_timeout_s): ...     # raw bytes as they arrive
    await client.close()

Why: aiohttp's client costs ~100 µs of CPU per request in the worker (issue 26); a POST of a
JSON body and the read of its answer need far less. The request is written here (one buffer:
the head and the body); the response is parsed by llhttp (`httptools`), in the protocol's
callbacks, with one future per request. A POST's timeout needs no timer of its own: the POSTs
with one timeout length have their deadlines in the order they are sent, so one timer armed at
the oldest deadline serves them all (`_Deadlines`; a timer costs about 2 µs in uvloop).

A pool per origin (scheme, host, port): idle connections are reused last-in first-out, at most
`limit_per_origin` connections exist at once (callers past it wait, first come first served,
within their timeout), and idle ones are closed after `keepalive_s`. A connection whose response
said `Connection: close`, that broke, that timed out, or whose response was not read to its end
is closed, never reused. `https:` verifies the server with the default SSL context.

No redirects, no cookies, no proxies, no compression (no `Accept-Encoding` is sent, so the
server answers in identity; a compressed answer anyway is an `H1ProtocolError`, retried like a
5xx by the adapters), no `Expect: 100-continue`. Credentials in the URL (`user:pw@`)
become a Basic `Authorization` header, as aiohttp does.

Errors are typed (`H1Error`'s subclasses) so an adapter maps them like aiohttp's: a timeout is a
`TimeoutError`, a refused/reset/cut connection a `ConnectionError`, a request that cannot be sent
a `ValueError`. No message carries the URL's path or query (keys may be there, `adapters.urls`),
its credentials, or a header's value.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Final, TypeVar, cast, overload

import httptools
from yarl import URL

__all__ = [
    "DEFAULT_MAX_BODY",
    "HEAD_BYTES",
    "MAX_HEAD_BYTES",
    "H1BodyTooLarge",
    "H1Client",
    "H1ConnectError",
    "H1ConnectionError",
    "H1Disconnected",
    "H1Error",
    "H1InvalidRequest",
    "H1ProtocolError",
    "H1Timeout",
    "Headers",
    "Response",
    "StreamResponse",
]

DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
"""The default cap on one answer's body read by `post` (`LLM_WORKER_MAX_RESPONSE_BYTES`)."""

HEAD_BYTES: Final = 64 * 1024
"""What `H1BodyTooLarge.head` keeps of a body over the cap (an error page's excerpt)."""

MAX_HEAD_BYTES: Final = 64 * 1024
"""The longest response head (status line and headers) read."""

_READ_HIGH: Final = 256 * 1024
"""A stream's unread bytes past which the socket is not read until the caller catches up."""

_MAX_TARGETS: Final = 1024
_MAX_HEADER_BLOCKS: Final = 1024
_MAX_DEADLINE_QUEUES: Final = 64
_SCANNED_HEADERS: Final = 16
_COMPACT_AT: Final = 8192
_CLOCK_SLACK_S: Final = 0.001  # a timer may fire up to a tick early (uvloop counts in ms)
_NO_ANSWER: Final = "no answer within the timeout"
_NO_BODY: Final = b""
_T = TypeVar("_T")
_BAD_HEADER_CHARS: Final = frozenset("\r\n\0")
_BAD_NAME_CHARS: Final = frozenset('\r\n\0 \t:()<>@,;\\"/[]?={}')
_OWN_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})


# -- errors -----------------------------------------------------------------------------------


class H1Error(Exception):
    """Any failure of the client."""


class H1InvalidRequest(H1Error, ValueError):
    """The request cannot be sent: not an http(s) URL, a header with a line break..."""


class H1Timeout(H1Error, TimeoutError):
    """No connection, no answer, or (streaming) no bytes within the time given."""


class H1ConnectionError(H1Error, ConnectionError):
    """The connection failed: see the subclasses."""


class H1ConnectError(H1ConnectionError):
    """No connection could be made: refused, unreachable, a name that does not resolve, TLS."""


class H1Disconnected(H1ConnectionError):
    """The connection closed (or was reset) before the response's end."""


class H1ProtocolError(H1Error):
    """The server's bytes are not an HTTP/1.1 response."""


class H1BodyTooLarge(H1Error):
    """The body is longer than the cap: its status, headers and first bytes (`HEAD_BYTES`)."""

    def __init__(self, cap: int, status: int, headers: Headers, head: bytes) -> None:
        super().__init__(f"the response body is larger than {cap} bytes")
        self.status = status
        self.headers = headers
        self.head = head


# -- the response -----------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """A response's headers: names lower-cased, looked up in any case; the first of repeats.

    Decoded when first read: a lookup among a few headers scans them as they came (bytes), the
    table of them all is built when a longer list is read or the headers are iterated."""

    __slots__ = ("_d", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]] | None = None) -> None:
        self._raw = raw or []
        self._d: dict[str, str] | None = None

    def _table(self) -> dict[str, str]:
        d = self._d
        if d is None:
            d = self._d = {}
            for name, value in self._raw:
                d.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        return d

    def _find(self, key: str) -> str | None:
        if self._d is None and len(self._raw) <= _SCANNED_HEADERS:
            try:
                want = key.lower().encode("latin-1")
            except UnicodeEncodeError:  # no header name is that
                return None
            for name, value in self._raw:
                if name.lower() == want:
                    return value.decode("latin-1")
            return None
        return self._table().get(key.lower())

    def __getitem__(self, key: str) -> str:
        value = self._find(key)
        if value is None:
            raise KeyError(key)
        return value

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, /, default: str | _T) -> str | _T: ...
    def get(self, key: str, /, default: object = None) -> object:
        value = self._find(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:  # names only: values may be anything the server echoed
        return f"Headers({sorted(self._table())})"


class Response:
    """A whole answer: status, headers, body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters (aiohttp's `content_type`)."""
        return media_type(self.headers)

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"


def media_type(headers: Mapping[str, str]) -> str:
    raw = headers.get("content-type")
    if not raw:
        return "application/octet-stream"
    return raw.partition(";")[0].strip().lower()


# -- one connection ---------------------------------------------------------------------------

_BUSY, _IDLE, _GONE = 0, 1, 2


class _Conn(asyncio.Protocol):
    """One TCP (or TLS) connection and the response being read on it."""

    __slots__ = (
        "body",
        "cap",
        "complete",
        "error",
        "framed",
        "head_size",
        "headers",
        "idle_since",
        "interim",
        "keep_alive",
        "parser",
        "paused",
        "pool",
        "raw",
        "size",
        "state",
        "status",
        "streaming",
        "transport",
        "turn",
        "waiter",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = _BUSY
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.turn = 0  # counts the waits for a wake (`_Deadlines` tells a finished one by it)
        self.error: H1Error | None = None
        self.streaming = False
        self.paused = False
        self.cap = DEFAULT_MAX_BODY
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw: list[tuple[bytes, bytes]] = []
        self.headers: Headers | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.interim = False
        self.framed = True
        self.keep_alive = False
        self.head_size = 0

    # -- the exchange (called by the client) ---------------------------------------------------

    def send(self, data: bytes, cap: int, streaming: bool) -> None:
        self._reset()
        self.error = None
        self.cap = cap
        self.streaming = streaming
        transport = self.transport
        if transport is None or transport.is_closing():
            self.error = H1Disconnected("the connection closed before the request was sent")
            return
        transport.write(data)

    @property
    def reusable(self) -> bool:
        t = self.transport
        return (
            self.complete
            and self.keep_alive
            and self.error is None
            and t is not None
            and not t.is_closing()
        )

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def fail(self, error: H1Error) -> None:
        """The response cannot be read on: remember why, wake the reader, drop the socket."""
        if self.error is None:
            self.error = error
        self.wake()
        self.abort()

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            t.abort()

    def close(self) -> None:
        t = self.transport
        if t is not None:
            t.close()

    def time_out(self, what: str) -> None:
        self.fail(H1Timeout(what))

    def take(self) -> bytes:
        """The stream's bytes received and not yet taken (b"" when none)."""
        body = self.body
        if not body:
            return _NO_BODY
        piece = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.size = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return piece

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state == _IDLE:
            self.pool.lost_idle(self)
            return
        if self.complete or self.error is not None:
            return
        if self.headers is not None and not self.framed:  # a body read until the close
            self.complete = True
            self.keep_alive = False
            self.wake()
            return
        why = "the connection closed before the response's end"
        if exc is not None:
            why = f"{why} ({type(exc).__name__})"
        self.fail(H1Disconnected(why))

    def data_received(self, data: bytes) -> None:
        if self.state != _BUSY or self.complete:  # bytes nobody asked for: not HTTP we know
            self.error = self.error or H1ProtocolError("bytes after the response's end")
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(H1ProtocolError("malformed response: an upgrade was not asked for"))
        except httptools.HttpParserError as exc:
            self.fail(H1ProtocolError(f"malformed response: {exc}"))
        if self.headers is None:  # llhttp keeps a header however long: bound the head here
            self.head_size += len(data)
            if self.head_size > MAX_HEAD_BYTES:
                self.fail(H1ProtocolError(f"the response head is over {MAX_HEAD_BYTES} bytes"))

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost says what that means

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response to one request
            self.error = H1ProtocolError("bytes after the response's end")
        self.raw = []
        self.body = []
        self.size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the answer comes after
            self.interim = True
            return
        self.interim = False
        self.status = status
        headers = self.headers = Headers(self.raw)
        self.keep_alive = self.parser.should_keep_alive()
        length = coding = framing = None  # the first of each, read here without decoding
        for name, value in self.raw:
            low = name.lower()
            if low == b"content-length":
                length = value if length is None else length
            elif low == b"transfer-encoding":
                framing = value if framing is None else framing
            elif low == b"content-encoding":
                coding = value if coding is None else coding
        chunked = framing is not None and b"chunked" in framing.lower()
        self.framed = length is not None or chunked or status in (204, 304)
        if coding is not None and coding.strip().lower() != b"identity":
            self.fail(H1ProtocolError("the response is compressed, which was not asked for"))
        elif (
            not self.streaming
            and length is not None
            and length.isdigit()
            and int(length) > self.cap
        ):
            self.fail(H1BodyTooLarge(self.cap, status, headers, _NO_BODY))
        elif self.streaming:
            self.wake()

    def on_body(self, body: bytes) -> None:
        if self.interim or self.error is not None:
            return
        self.body.append(body)
        self.size += len(body)
        if self.streaming:
            if self.size > _READ_HIGH and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            self.wake()
        elif self.size > self.cap:
            assert self.headers is not None
            self.fail(H1BodyTooLarge(self.cap, self.status, self.headers, self._head_bytes()))
            self.body = []  # the cap's worth of bytes goes now, not with the connection

    def _head_bytes(self) -> bytes:
        """The body's first `HEAD_BYTES` (an error page's excerpt), without joining it all."""
        out = bytearray()
        for piece in self.body:
            out += piece[: HEAD_BYTES - len(out)]
            if len(out) >= HEAD_BYTES:
                break
        return bytes(out)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.error is None:
            self.complete = True
            self.wake()


# -- the pool of one origin -------------------------------------------------------------------


class _Pool:
    """The connections to one origin."""

    __slots__ = (
        "client",
        "count",
        "host",
        "idle",
        "keepalive_s",
        "limit",
        "loop",
        "port",
        "sweeper",
        "tls",
        "waiters",
    )

    def __init__(self, client: H1Client, host: str, port: int, tls: bool) -> None:
        self.client = client
        self.loop = client.loop
        self.host = host
        self.port = port
        self.tls = tls
        self.limit = client.limit_per_origin
        self.keepalive_s = client.keepalive_s
        self.idle: list[_Conn] = []  # oldest first; taken from the end
        self.count = 0  # connections open or opening
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self.sweeper: asyncio.TimerHandle | None = None

    def take_idle(self) -> _Conn | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.state = _BUSY
            t = conn.transport
            if t is not None and not t.is_closing():
                return conn
            self._drop(conn)
        return None

    async def acquire(self, deadline: float) -> _Conn:
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            if self.count < self.limit:
                self.count += 1
                try:
                    return await self._connect(deadline)
                except BaseException:
                    self.count -= 1
                    self._wake_one()
                    raise
            got = await self._wait(deadline)
            if got is not None:
                return got

    async def _wait(self, deadline: float) -> _Conn | None:
        """A connection handed over by `release`, or None when a slot freed (connect then)."""
        fut: asyncio.Future[_Conn | None] = self.loop.create_future()
        self.waiters.append(fut)
        timer = self.loop.call_at(deadline, _expire, fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()  # handed over as we gave up: pass it on
                if handed is not None:
                    self.release(handed)
                else:
                    self._wake_one()
            raise
        finally:
            timer.cancel()

    async def _connect(self, deadline: float) -> _Conn:
        host, port = self.host, self.port
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(self),
                    host,
                    port,
                    ssl=self.client.ssl_context() if self.tls else None,
                    server_hostname=host if self.tls else None,
                )
        except TimeoutError:
            raise H1Timeout(f"no connection to {host}:{port} within the timeout") from None
        except OSError as exc:
            why = exc.strerror or str(exc) or type(exc).__name__
            raise H1ConnectError(f"cannot connect to {host}:{port}: {why}") from exc
        return conn

    def release(self, conn: _Conn) -> None:
        """Back to the pool after an exchange: reused when the answer was read whole and the
        server keeps the connection; closed otherwise."""
        if self.client.closed or not conn.reusable:
            if conn.complete:
                conn.close()
            else:
                conn.abort()
            self._drop(conn)
            return
        conn.streaming = False
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.state = _IDLE
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_at(conn.idle_since + self.keepalive_s, self._sweep)

    def _drop(self, conn: _Conn) -> None:
        """A connection gone for good: its slot is free."""
        if conn.state == _GONE:
            return
        conn.state = _GONE
        self.count -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def lost_idle(self, conn: _Conn) -> None:
        """An idle connection the server (or the network) closed."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._drop(conn)

    def _sweep(self) -> None:
        """Close the connections idle for `keepalive_s`; come back for the next one."""
        self.sweeper = None
        idle = self.idle
        cutoff = self.loop.time() - self.keepalive_s
        stale = 0
        while stale < len(idle) and idle[stale].idle_since <= cutoff:
            stale += 1
        old = idle[:stale]
        del idle[:stale]
        for conn in old:
            self._drop(conn)
            conn.close()
        if idle:
            self.sweeper = self.loop.call_at(idle[0].idle_since + self.keepalive_s, self._sweep)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for conn in self.idle:
            conn.state = _GONE
            conn.close()
        self.idle.clear()
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(H1ConnectError("the client is closed"))
        self.waiters.clear()


def _expire(fut: asyncio.Future[_Conn | None]) -> None:
    if not fut.done():
        fut.set_exception(H1Timeout("no free connection within the timeout"))


# -- what a URL means -------------------------------------------------------------------------


class _Target:
    """Where a URL's requests go and the start of their head (request line, Host, own headers)."""

    __slots__ = ("host", "key", "port", "start", "tls")

    def __init__(self, url: URL, user_agent: str) -> None:
        scheme = url.scheme
        host = url.raw_host
        if scheme not in ("http", "https") or not host or not url.absolute:
            raise H1InvalidRequest("not an absolute http(s) URL")
        port = url.port or (443 if scheme == "https" else 80)
        self.tls = scheme == "https"
        self.host = host
        self.port = port
        self.key = (scheme, host, port)
        path = url.raw_path_qs or "/"
        if url.raw_fragment or any(c in _BAD_HEADER_CHARS or c == " " for c in path):
            raise H1InvalidRequest("the URL's path cannot be sent")
        authority = url.host_port_subcomponent or host
        lines = [f"POST {path} HTTP/1.1", f"Host: {authority}"]
        if user_agent:
            lines.append(f"User-Agent: {user_agent}")
        if url.raw_user is not None or url.raw_password is not None:
            pair = f"{url.user or ''}:{url.password or ''}".encode()
            lines.append("Authorization: Basic " + base64.b64encode(pair).decode("ascii"))
        try:
            self.start = ("\r\n".join(lines) + "\r\n").encode("ascii")
        except UnicodeEncodeError:
            raise H1InvalidRequest("the URL cannot be sent (not ASCII)") from None


def _header_block(headers: Mapping[str, str]) -> bytes:
    """The caller's headers as lines of bytes, with `Content-Type: application/json` unless
    they set one; `Host`, `Content-Length`, `Transfer-Encoding` and `Connection` are the
    client's own. Raises `H1InvalidRequest` for a name or value that would break the head."""
    out = []
    typed = False
    for name, value in headers.items():
        lower = name.lower()
        if lower in _OWN_HEADERS:
            continue
        if not name or any(c in _BAD_NAME_CHARS for c in name):
            raise H1InvalidRequest(f"invalid header name {name!r}")
        if any(c in _BAD_HEADER_CHARS for c in value):
            raise H1InvalidRequest(f"the value of header {name!r} has a line break")
        typed = typed or lower == "content-type"
        out.append(f"{name}: {value}\r\n")
    if not typed:
        out.insert(0, "Content-Type: application/json\r\n")
    try:
        return "".join(out).encode("latin-1")
    except UnicodeEncodeError:
        raise H1InvalidRequest("a header is not Latin-1 text") from None


# -- the client -------------------------------------------------------------------------------


class _Deadlines:
    """The deadlines of the waits for an answer that share one timeout length, and one timer.

    Their deadlines (sent at + the timeout) come in order, so the queue is ordered too, and its
    timer is armed at the oldest live deadline only. A wait that ends leaves its entry behind
    (nothing to cancel): an entry is live while its connection's `turn` is the one it was given.
    Finished entries at the front go as new ones come; the rest when their deadline passes, or
    all at once when the queue outgrows `_COMPACT_AT` (and twice its live entries). A deadline
    before the newest one's (a POST that waited for a connection) is refused: `watch` returns
    False and the caller arms a timer of its own."""

    __slots__ = ("compact_at", "loop", "queue", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[tuple[float, _Conn, int]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.compact_at = _COMPACT_AT

    def watch(self, conn: _Conn, deadline: float) -> bool:
        q = self.queue
        while q and q[0][1].turn != q[0][2]:  # finished
            q.popleft()
        if q and deadline < q[-1][0]:
            return False
        q.append((deadline, conn, conn.turn))
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._fire)
        elif len(q) > self.compact_at:
            self.queue = deque(e for e in q if e[1].turn == e[2])
            self.compact_at = max(_COMPACT_AT, 2 * len(self.queue))
        return True

    def _fire(self) -> None:
        self.timer = None
        q, now = self.queue, self.loop.time() + _CLOCK_SLACK_S  # due: as asyncio's loop counts
        while q:
            deadline, conn, turn = q[0]
            if conn.turn != turn:
                q.popleft()
            elif deadline <= now:
                q.popleft()
                waiter = conn.waiter
                if waiter is not None and not waiter.done():  # not answered just in time
                    conn.time_out(_NO_ANSWER)
            else:
                self.timer = self.loop.call_at(deadline, self._fire)
                return

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class H1Client:
    """Keep-alive HTTP/1.1 POSTs, pooled per origin (create and use inside the running loop)."""

    def __init__(
        self,
        *,
        limit_per_origin: int = 256,
        keepalive_s: float = 30.0,
        max_body: int = DEFAULT_MAX_BODY,
        user_agent: str = "llm-worker/0.1 (+h1)",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if limit_per_origin < 1:
            raise ValueError("limit_per_origin must be at least 1")
        if max_body < 1:
            raise ValueError("max_body must be at least 1")
        self.loop = asyncio.get_running_loop()
        self.limit_per_origin = limit_per_origin
        self.keepalive_s = keepalive_s
        self.max_body = max_body
        self.closed = False
        self._user_agent = user_agent
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[URL | str, _Target] = {}
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._deadlines: dict[float, _Deadlines] = {}

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _target(self, url: URL | str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            try:
                parsed = url if isinstance(url, URL) else URL(url)
            except (ValueError, TypeError):
                raise H1InvalidRequest("not an absolute http(s) URL") from None
            target = _Target(parsed, self._user_agent)
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()
            self._targets[url] = target
        return target

    def _head(self, target: _Target, headers: Mapping[str, str], length: int) -> bytes:
        key = tuple(headers.items())
        block = self._blocks.get(key)
        if block is None:
            block = _header_block(headers)
            if len(self._blocks) >= _MAX_HEADER_BLOCKS:
                self._blocks.clear()
            self._blocks[key] = block
        return b"%b%bContent-Length: %d\r\n\r\n" % (target.start, block, length)

    def _pool(self, target: _Target) -> _Pool:
        if self.closed:
            raise H1ConnectError("the client is closed")
        pool = self._pools.get(target.key)
        if pool is None:
            pool = self._pools[target.key] = _Pool(self, target.host, target.port, target.tls)
        return pool

    async def _open(
        self, url: URL | str, body: bytes, headers: Mapping[str, str], deadline: float, cap: int
    ) -> tuple[_Pool, _Conn]:
        """A connection with the request written on it."""
        target = self._target(url)
        head = self._head(target, headers, len(body))
        pool = self._pool(target)
        conn = pool.take_idle() or await pool.acquire(deadline)
        conn.send(head + body, cap, streaming=False)
        return pool, conn

    async def post(
        self,
        url: URL | str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        *,
        max_body: int | None = None,
    ) -> Response:
        """POST `body` and read the whole answer within `timeout_s` (connect, wait for a free
        connection, send, read). Raises `H1BodyTooLarge` past `max_body` (the client's)."""
        deadline = self.loop.time() + timeout_s
        pool, conn = await self._open(url, body, headers, deadline, max_body or self.max_body)
        try:
            if conn.error is None and not conn.complete:
                shared = self._deadlines.get(timeout_s)
                if shared is None and len(self._deadlines) < _MAX_DEADLINE_QUEUES:
                    shared = self._deadlines[timeout_s] = _Deadlines(self.loop)
                await _until(conn, deadline, _NO_ANSWER, shared)
            if conn.error is not None:
                raise conn.error
            assert conn.headers is not None
            body_parts = conn.body
            data = body_parts[0] if len(body_parts) == 1 else b"".join(body_parts)
            return Response(conn.status, conn.headers, data)
        finally:
            pool.release(conn)

    async def post_read(
        self, url: URL | str, body: bytes, headers: Mapping[str, str], timeout_s: float, cap: int
    ) -> tuple[int, Mapping[str, str], bytes, bool]:
        """`post` as the adapters' seam has it (`adapters.http_client.HTTPClient`): status,
        headers, body and True; or, past `cap`, the body's first bytes and False."""
        try:
            resp = await self.post(url, body, headers, timeout_s, max_body=cap)
        except H1BodyTooLarge as big:
            return big.status, big.headers, big.head, False
        return resp.status, resp.headers, resp.body, True

    def stream_post(
        self,
        url: URL | str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> _StreamContext:
        """`async with client.stream_post(...) as resp:` the answer's status and headers within
        `timeout_s`, then its body piece by piece (`resp.iter_chunks`)."""
        return _StreamContext(self, url, body, headers, timeout_s)

    async def close(self) -> None:
        """Close every idle connection; busy ones close as their exchange ends."""
        self.closed = True
        for shared in self._deadlines.values():
            shared.close()
        self._deadlines.clear()
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            pool.close()
        await asyncio.sleep(0)  # let the transports say goodbye

    def stats(self) -> dict[str, int]:
        return {
            "origins": len(self._pools),
            "connections": sum(p.count for p in self._pools.values()),
            "idle": sum(len(p.idle) for p in self._pools.values()),
        }

    async def __aenter__(self) -> H1Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _until(
    conn: _Conn, deadline: float | None, what: str, shared: _Deadlines | None = None
) -> None:
    """Wait until the connection wakes its reader, or fail it with `H1Timeout(what)` at
    `deadline` (None: no bound of its own), timed by `shared` when it takes the deadline, by a
    timer of its own otherwise. A cancelled caller leaves the connection broken (it is not
    reused)."""
    loop = conn.pool.loop
    waiter = conn.waiter = loop.create_future()
    conn.turn += 1
    timer = None
    if deadline is not None and (shared is None or not shared.watch(conn, deadline)):
        timer = loop.call_at(deadline, conn.time_out, what)
    try:
        await waiter
    except BaseException:
        conn.fail(H1Disconnected("the exchange was abandoned"))
        raise
    finally:
        if timer is not None:
            timer.cancel()
        conn.waiter = None
        conn.turn += 1


# -- streaming --------------------------------------------------------------------------------


class StreamResponse:
    """An answer read as it comes: `status`, `headers`, then `iter_chunks`."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Conn) -> None:
        assert conn.headers is not None
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers

    @property
    def content_type(self) -> str:
        return media_type(self.headers)

    @property
    def at_end(self) -> bool:
        """The body was read to its end (the connection goes back to the pool)."""
        conn = self._conn
        return conn.complete and not conn.body

    async def iter_chunks(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (each piece everything received since the last);
        `H1Timeout` when nothing comes for `idle_timeout_s`, `H1Disconnected` when the
        connection closes before the body's end."""
        while piece := await self.readany(idle_timeout_s):
            yield piece

    async def readany(self, idle_s: float | None) -> bytes:
        """The bytes received since the last read (b"" at the body's end); `H1Timeout` when
        none come within `idle_s` (None: no bound of its own)."""
        conn = self._conn
        while True:
            piece = conn.take()
            if piece:
                return piece
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return _NO_BODY
            deadline = None if idle_s is None else conn.pool.loop.time() + idle_s
            await _until(conn, deadline, "no bytes within the idle timeout")

    async def read_capped(self, cap: int) -> tuple[bytes, bool]:
        """The rest of the body and True; or, past `cap` bytes, its first bytes (at most
        `HEAD_BYTES`) and False, the connection dropped."""
        parts: list[bytes] = []
        size = 0
        while piece := await self.readany(None):
            parts.append(piece)
            size += len(piece)
            if size > cap:
                self.close()
                return b"".join(parts)[:HEAD_BYTES], False
        return b"".join(parts), True

    def close(self) -> None:
        """Drop the connection now (it is not reused)."""
        self._conn.fail(H1Disconnected("the response was closed before its end"))


class _StreamContext:
    __slots__ = ("_body", "_client", "_conn", "_headers", "_pool", "_timeout_s", "_url")

    def __init__(
        self,
        client: H1Client,
        url: URL | str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> None:
        self._client = client
        self._url = url
        self._body = body
        self._headers = headers
        self._timeout_s = timeout_s
        self._pool: _Pool | None = None
        self._conn: _Conn | None = None

    async def __aenter__(self) -> StreamResponse:
        client = self._client
        deadline = client.loop.time() + self._timeout_s
        target = client._target(self._url)
        head = client._head(target, self._headers, len(self._body))
        pool = self._pool = client._pool(target)
        conn = self._conn = pool.take_idle() or await pool.acquire(deadline)
        try:
            conn.send(head + self._body, client.max_body, streaming=True)
            if conn.error is None and conn.headers is None:
                await _until(conn, deadline, "no answer within the timeout")
            if conn.error is not None:
                raise conn.error
        except BaseException:
            pool.release(conn)
            self._conn = None
            raise
        return StreamResponse(conn)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, pool = self._conn, self._pool
        self._conn = None
        if conn is None or pool is None:
            return
        if conn.body:  # bytes the caller did not take: the body was not read to its end
            conn.complete = False
        pool.release(conn)
