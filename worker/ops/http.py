"""The small HTTP server: `/metrics`, `/healthz` (liveness), `/readyz` (readiness).

It runs on a thread of its own, not on the event loop, because liveness must be answered
when the loop is stuck: a blocked loop cannot answer for itself, and a probe that merely
times out says nothing about why. So:

- `/healthz` runs `live()` on the server's thread. It reads only plain values that other
  threads write (a fatal Kafka error, the loop's last tick: `LoopLag.stalled_for`), and
  answers 503 when the loop has not run for `LLM_WORKER_LOOP_STALL_S` or a Kafka client is
  broken, with a JSON body that says which.
- `/readyz` and `/metrics` read the worker's state, which the loop owns: they are computed on
  the loop (`call_soon_threadsafe`). A loop that does not answer within `loop_timeout_s` makes
  them answer 503 (`{"ready": false, "checks": {"event_loop": ...}}`): a stuck worker is
  neither ready nor able to report its metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer"]

log = logging.getLogger("llm_worker.http")

Check = Callable[[], tuple[bool, dict[str, Any]]]


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
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._live = live
        self._host = host
        self._port = port
        self._loop_timeout = loop_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = ThreadingHTTPServer((self._host, self._port), _handler(self))
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="health-http"
        )
        self._thread.daemon = True
        self._thread.start()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    # -- on the server's threads -------------------------------------------------------------
    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the event loop; TimeoutError when the loop does not get to it."""
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
            return fut.result(self._loop_timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(
                f"the event loop did not answer in {self._loop_timeout:g} s"
            ) from None

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        if path == "/healthz":
            if self._live is None:
                return _json(200, {"status": "ok"})
            ok, detail = self._live()
            return _json(200 if ok else 503, {"status": "ok" if ok else "failing", **detail})
        if path == "/readyz":
            try:
                ok, detail = self._on_loop(self._ready)
            except TimeoutError as exc:
                checks = {"event_loop": {"ok": False, "state": "stalled", "detail": str(exc)}}
                return _json(503, {"ready": False, "checks": checks})
            return _json(200 if ok else 503, {"ready": ok, **detail})
        if path == "/metrics":
            try:
                body: bytes = self._on_loop(lambda: generate_latest(self._registry))
            except TimeoutError as exc:
                return 503, "text/plain; charset=utf-8", f"{exc}\n".encode()
            return 200, CONTENT_TYPE_LATEST, body
        return 404, "text/plain; charset=utf-8", b"not found\n"


def _json(status: int, doc: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(doc, default=str).encode()


def _handler(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that never finishes its request does not keep a thread

        def do_GET(self) -> None:
            try:
                status, ctype, body = server.answer(self.path.split("?", 1)[0])
            except Exception:
                log.exception("error answering %s", self.path)
                status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # no access log
            pass

    return Handler
