"""The small HTTP server: `/metrics`, `/healthz` (liveness), `/readyz` (readiness).

It runs on a thread of its own, with a small asyncio loop of its own, not on the worker's event
loop, because liveness must be answered when that loop is stuck: a blocked loop cannot answer
for itself, and a probe that merely times out says nothing about why. So:

- `/healthz` runs `live()` on the server's thread. It reads only plain values that other
  threads write (a fatal Kafka error, the loop's last tick: `LoopLag.stalled_for`), and
  answers 503 when the loop has not run for `LLM_WORKER_LOOP_STALL_S` or a Kafka client is
  broken, with a JSON body that says which.
- `/readyz` and `/metrics` read the worker's state, which the worker's loop owns: they are
  computed there (`call_soon_threadsafe`), and the server's loop awaits the answer. A loop
  that does not answer within `loop_timeout_s` makes them answer 503 (`{"ready": false,
  "checks": {"event_loop": ...}}`): a stuck worker is neither ready nor able to report its
  metrics.

One thread serves every client (asyncio streams, not a thread per connection), and what
clients can hold is bounded:

- At most `max_connections` (`LLM_WORKER_HTTP_MAX_CONNECTIONS`) are open at once. At the cap,
  a new connection takes the place of the oldest one still sending its request (an idle or
  slow client), so a probe gets in while slow clients fill the cap; when every open
  connection is being answered, the new one gets a 503 at once and is closed.
- A client has `request_timeout_s` to send its request line and headers (at most
  `MAX_HEAD_BYTES`), and as long again to take the answer; then it is closed. One request per
  connection (`Connection: close`): probes and scrapes open a new one each time anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MAX_HEAD_BYTES", "REQUEST_TIMEOUT_S", "HealthServer", "PortUnavailable"]

log = logging.getLogger("llm_worker.http")

Check = Callable[[], tuple[bool, dict[str, Any]]]

MAX_HEAD_BYTES = 16 * 1024
"""The request line and headers of a GET; more is a 400."""
REQUEST_TIMEOUT_S = 5.0
LINGER_BYTES = 1 << 20
"""After refusing an oversized request, at most this much more of it is read and discarded."""
"""To send a request, and again to take its answer: a probe needs milliseconds."""
_TEXT = "text/plain; charset=utf-8"


class _Connection:
    __slots__ = ("answering", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.answering = False


class PortUnavailable(RuntimeError):
    """The HTTP port cannot be bound; the message names the setting to change."""


def bind_problem(host: str, port: int, exc: OSError) -> PortUnavailable:
    """Why `host:port` could not be bound, as one line naming the setting that fixes it."""
    code = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None  # not a resolver's
    why = (os.strerror(code) if code is not None else exc.strerror or str(exc)).lower()
    if exc.errno == errno.EADDRINUSE:
        fix = (
            f"LLM_WORKER_HTTP_PORT={port} is in use ({why}): set LLM_WORKER_HTTP_PORT to a free "
            "port"
        )
    elif exc.errno == errno.EACCES:
        fix = (
            f"LLM_WORKER_HTTP_PORT={port} is not allowed ({why}): set LLM_WORKER_HTTP_PORT to a "
            "port above 1023"
        )
    else:
        fix = (
            f"cannot listen on LLM_WORKER_HTTP_HOST={host!r} LLM_WORKER_HTTP_PORT={port} ({why}): "
            "set LLM_WORKER_HTTP_HOST to an address of this host (0.0.0.0: all of them)"
        )
    return PortUnavailable(fix)


class HealthServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Check,
        *,
        live: Check | None = None,
        host: str,
        port: int,
        loop_timeout_s: float = 2.0,
        max_connections: int = 64,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._live = live
        self._host = host
        self._port = port
        self._loop_timeout = loop_timeout_s
        self._max_connections = max_connections
        self._request_timeout = request_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._open: dict[_Connection, None] = {}  # oldest first; the server's thread only
        self.port: int | None = None
        self.accepted = 0
        self.evicted = 0
        """Connections closed at the cap to let a newer one in (they had sent no request)."""
        self.refused = 0
        """Connections answered 503 at the cap (every open one was being answered)."""

    def open_connections(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        """Bind and serve on the server's thread; PortUnavailable (a port in use, a host that
        is not this one's) is raised here, naming the setting to change."""
        self._loop = asyncio.get_running_loop()
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(bound,), name="health-http")
        self._thread.daemon = True
        self._thread.start()
        try:
            self.port = await asyncio.wrap_future(bound)
        except OSError as exc:
            self._thread = None
            raise bind_problem(self._host, self._port, exc) from None

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._server_loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # its loop has ended already
                pass
        await asyncio.to_thread(thread.join, 5.0)

    # -- on the server's thread ----------------------------------------------------------------
    def _run(self, bound: concurrent.futures.Future[int]) -> None:
        try:
            asyncio.run(self._serve(bound))
        except BaseException as exc:
            if not bound.done():
                bound.set_exception(exc)
            else:
                log.exception("the HTTP server stopped")

    async def _serve(self, bound: concurrent.futures.Future[int]) -> None:
        self._server_loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connected, self._host, self._port, limit=MAX_HEAD_BYTES
        )
        bound.set_result(int(server.sockets[0].getsockname()[1]))
        try:
            await self._stop.wait()
        finally:
            server.close()
            for conn in list(self._open):
                conn.writer.transport.abort()
            await server.wait_closed()

    def _make_room(self) -> bool:
        """At the cap: close the oldest connection that is still sending its request."""
        for conn in self._open:
            if not conn.answering:
                del self._open[conn]
                conn.writer.transport.abort()
                self.evicted += 1
                return True
        return False

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if len(self._open) >= self._max_connections and not self._make_room():
            self.refused += 1
            writer.write(_response(503, _TEXT, b"too many connections\n"))
            writer.close()
            return
        conn = _Connection(writer)
        self._open[conn] = None
        try:
            await self._exchange(reader, conn)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # gone, too slow, or closed to make room
        except Exception:
            log.exception("error serving an HTTP client")
        finally:
            self._open.pop(conn, None)
            writer.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        overrun = False
        try:
            async with asyncio.timeout(self._request_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            head, overrun = b"", True
        conn.answering = True
        method, path = _request_line(head)
        if not path:
            reply = _response(400, _TEXT, b"bad request\n")
        elif method not in ("GET", "HEAD"):
            reply = _response(405, _TEXT, b"method not allowed\n", allow=True)
        else:
            try:
                status, ctype, body = await self.answer(path)
            except Exception:
                log.exception("error answering %s", path[:200])
                status, ctype, body = 500, _TEXT, b"internal error\n"
            reply = _response(status, ctype, body, head_only=method == "HEAD")
        writer = conn.writer
        writer.write(reply)
        async with asyncio.timeout(self._request_timeout):
            await writer.drain()
            if overrun:  # the client may still be sending: read it away first, or the close
                await _linger(reader, writer)  # resets the connection before it reads the 400
            writer.close()
            await writer.wait_closed()

    async def _on_loop(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the worker's event loop; TimeoutError when that loop does not get to
        it in time."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise TimeoutError("the event loop is not running")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError as exc:  # closed meanwhile
            raise TimeoutError("the event loop is not running") from exc
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self._loop_timeout)
        except TimeoutError:
            fut.cancel()
            raise TimeoutError(
                f"the event loop did not answer in {self._loop_timeout:g} s"
            ) from None

    async def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        if path == "/healthz":
            if self._live is None:
                return _json(200, {"status": "ok"})
            ok, detail = self._live()
            return _json(200 if ok else 503, {"status": "ok" if ok else "failing", **detail})
        if path == "/readyz":
            try:
                ok, detail = await self._on_loop(self._ready)
            except TimeoutError as exc:
                checks = {"event_loop": {"ok": False, "state": "stalled", "detail": str(exc)}}
                return _json(503, {"ready": False, "checks": checks})
            return _json(200 if ok else 503, {"ready": ok, **detail})
        if path == "/metrics":
            try:
                body: bytes = await self._on_loop(lambda: generate_latest(self._registry))
            except TimeoutError as exc:
                return 503, _TEXT, f"{exc}\n".encode()
            return 200, CONTENT_TYPE_LATEST, body
        return 404, _TEXT, b"not found\n"


def _request_line(head: bytes) -> tuple[str, str]:
    """(method, path without its query) of a request head; ("", "") when it is not HTTP."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]


def _response(
    status: int, ctype: str, body: bytes, *, head_only: bool = False, allow: bool = False
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        lines.append("Allow: GET, HEAD")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _json(status: int, doc: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(doc, default=str).encode()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client still sends (at most `LINGER_BYTES`, within
    the caller's timeout) until it closes too: a close with unread input would send a reset,
    and a client that reads only after sending would lose the answer (a lingering close)."""
    if writer.can_write_eof():
        writer.write_eof()
    left = LINGER_BYTES
    while left > 0 and (chunk := await reader.read(min(left, 65536))):
        left -= len(chunk)
