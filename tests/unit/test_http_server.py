"""The HTTP port against clients that hold connections (issue 21, finding 8: 2,000 slow clients
made 2,020 threads): a bounded number of connections on one thread, idle ones closed, and the
probes still answered."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from llm_worker.worker.ops.http import HealthServer

CAP = 64


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    s = HealthServer(
        CollectorRegistry(),
        lambda: (True, {"checks": {}}),
        live=lambda: (True, {"event_loop_stalled_s": 0.0}),
        host="127.0.0.1",
        port=0,
        max_connections=CAP,
        request_timeout_s=1.0,
    )
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read()


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def _none_open(server: HealthServer, within_s: float = 2.0) -> bool:
    """The server's count of open connections reaches 0 (its thread closes the last one just
    after the client has read its answer)."""
    deadline = time.monotonic() + within_s
    while server.open_connections() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return server.open_connections() == 0


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_idle_clients_take_no_threads_and_the_probes_still_get_in(
    server: HealthServer,
) -> None:
    assert server.port is not None
    threads = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(500)]
    try:
        for _ in range(500):  # all accepted: the oldest ones made room for the newer
            if server.accepted == 500:
                break
            await asyncio.sleep(0.01)
        assert server.accepted == 500 and server.open_connections() <= CAP
        assert server.evicted > 0
        assert threading.active_count() <= threads + 1  # (+1: asyncio.to_thread's worker)
        status, body = await asyncio.to_thread(_get, server.port, "/healthz")
        assert status == 200 and b"event_loop_stalled_s" in body
        status, _ = await asyncio.to_thread(_get, server.port, "/readyz")
        assert status == 200
        # every idle client is closed: made room for a newer one, or after the timeout
        for sock in idle:
            sock.settimeout(3.0)
        closed = await asyncio.to_thread(lambda: sum(map(_closed_by_server, idle)))
        assert closed == len(idle)
        assert await _none_open(server)
    finally:
        for sock in idle:
            sock.close()


async def test_a_client_that_sends_nothing_is_closed_after_the_timeout(
    server: HealthServer,
) -> None:
    assert server.port is not None
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(5.0)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the start of a request, never finished
    started = time.monotonic()
    try:
        assert await asyncio.to_thread(_closed_by_server, sock)
        assert 0.8 <= time.monotonic() - started < 3.0
    finally:
        sock.close()
    assert server.evicted == 0


async def test_requests_that_are_not_a_get_are_answered_and_closed(server: HealthServer) -> None:
    assert server.port is not None
    port = server.port
    post = await asyncio.to_thread(_raw, port, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post
    junk = await asyncio.to_thread(_raw, port, b"\x16\x03\x01 hello\r\n\r\n")
    assert junk.startswith(b"HTTP/1.1 400 ")
    huge = await asyncio.to_thread(_raw, port, b"GET /healthz HTTP/1.1\r\nX: " + b"x" * 20_000)
    assert huge.startswith(b"HTTP/1.1 400 ")
    head = await asyncio.to_thread(_raw, port, b"HEAD /healthz?x=1 HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # no body
    assert b"Connection: close" in head
    assert (await asyncio.to_thread(_get, port, "/metrics"))[0] == 200
    assert await _none_open(server)


async def test_an_oversized_request_still_reads_its_400(server: HealthServer) -> None:
    """A client that sends a 300 KB request head in full before it reads gets the 400, not a
    connection reset: the server reads the rest away before it closes."""
    assert server.port is not None
    big = b"GET /healthz HTTP/1.1\r\nX: " + b"x" * 300_000 + b"\r\n\r\n"
    answer = await asyncio.to_thread(_raw, server.port, big)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert await _none_open(server)
