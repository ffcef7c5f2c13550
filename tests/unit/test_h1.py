"""adapters/h1: the lean HTTP/1.1 client against real local servers (a raw asyncio one that can
misbehave, and aiohttp's)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from llm_worker.adapters.h1 import (
    H1BodyTooLarge,
    H1Client,
    H1ConnectError,
    H1Disconnected,
    H1InvalidRequest,
    H1ProtocolError,
    H1Timeout,
    Headers,
)

Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]
Respond = Callable[[bytes, bytes], "bytes | Writer"]

SECRET = "sk-very-secret"


def ok(body: bytes = b'{"ok":1}', *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes) -> bytes:
    out = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for p in pieces:
        out += b"%x\r\n%b\r\n" % (len(p), p)
    return out + b"0\r\n\r\n"


class RawServer:
    """Reads requests (head, Content-Length body) on each connection; `respond(head, body)`
    gives the bytes to write, or a coroutine function writing them itself (to misbehave)."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.accepts = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.active = 0
        self.most_active = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                self.active += 1
                self.most_active = max(self.most_active, self.active)
                try:
                    answer = self.respond(head, body)
                    if isinstance(answer, bytes):
                        writer.write(answer)
                        await writer.drain()
                    else:
                        await answer(writer)
                finally:
                    self.active -= 1
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def client() -> AsyncIterator[H1Client]:
    c = H1Client(limit_per_origin=8, keepalive_s=30.0)
    yield c
    await c.close()


async def serve(respond: Respond) -> RawServer:
    return await RawServer(respond).start()


# -- keep-alive and the pool ------------------------------------------------------------------


async def test_one_connection_for_100_sequential_posts(client: H1Client) -> None:
    srv = await serve(lambda head, body: ok(b'{"n":%d}' % len(body)))
    for i in range(100):
        resp = await client.post(srv.url(), b"x" * i, {}, 5)
        assert (resp.status, resp.body) == (200, b'{"n":%d}' % i)
    assert srv.accepts == 1
    assert client.stats() == {"origins": 1, "connections": 1, "idle": 1}
    await srv.close()


def test_keep_alive_under_uvloop() -> None:
    async def main() -> int:
        srv = await serve(lambda head, body: ok())
        async with H1Client() as c:
            for _ in range(20):
                assert (await c.post(srv.url(), b"{}", {}, 5)).status == 200
        await srv.close()
        return srv.accepts

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == 1


async def test_the_request_head(client: H1Client) -> None:
    srv = await serve(lambda head, body: ok())
    url = f"http://user:p%40ss@127.0.0.1:{srv.port}/v1/chat/completions?api-version=1"
    await client.post(url, b'{"a":1}', {"Authorization-X": "k", "X-Request-Id": "r1"}, 5)
    await client.post(srv.url("/v2"), b"<x/>", {"content-type": "text/xml"}, 5)
    (head, body), (head2, _) = srv.requests
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions?api-version=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{srv.port}" in lines
    assert "Content-Type: application/json" in lines
    assert "Content-Length: 7" in lines
    assert "X-Request-Id: r1" in lines
    basic = base64.b64encode(b"user:p@ss").decode()
    assert f"Authorization: Basic {basic}" in lines
    assert body == b'{"a":1}'
    lines2 = head2.decode().split("\r\n")
    assert lines2[0] == "POST /v2 HTTP/1.1"
    assert "content-type: text/xml" in lines2
    assert not any(line.startswith("Content-Type:") for line in lines2)


async def test_the_cap_per_origin_queues_callers() -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.03)
        writer.write(ok())
        await writer.drain()

    srv = await serve(lambda head, body: slow)
    async with H1Client(limit_per_origin=2) as c:
        answers = await asyncio.gather(*(c.post(srv.url(), b"{}", {}, 5) for _ in range(7)))
        assert [a.status for a in answers] == [200] * 7
        assert srv.accepts == 2
        assert srv.most_active == 2
        assert c.stats()["connections"] == 2
    await srv.close()


async def test_a_waiter_times_out_when_no_connection_frees() -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    srv = await serve(lambda head, body: never)
    async with H1Client(limit_per_origin=1) as c:
        first = asyncio.create_task(c.post(srv.url(), b"{}", {}, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(H1Timeout):
            await c.post(srv.url(), b"{}", {}, 0.05)
        first.cancel()
    await srv.close()


async def test_connection_close_is_not_reused(client: H1Client) -> None:
    srv = await serve(lambda head, body: ok(b"{}", "Connection: close"))
    for _ in range(3):
        assert (await client.post(srv.url(), b"{}", {}, 5)).body == b"{}"
    assert srv.accepts == 3
    assert client.stats()["connections"] == 0
    await srv.close()


async def test_idle_connections_close_after_the_keepalive() -> None:
    srv = await serve(lambda head, body: ok())
    async with H1Client(keepalive_s=0.05) as c:
        await c.post(srv.url(), b"{}", {}, 5)
        assert c.stats()["idle"] == 1
        await asyncio.sleep(0.2)
        assert c.stats() == {"origins": 1, "connections": 0, "idle": 0}
        await c.post(srv.url(), b"{}", {}, 5)
    assert srv.accepts == 2
    await srv.close()


async def test_an_idle_connection_the_server_closed_is_not_used(client: H1Client) -> None:
    async def once(writer: asyncio.StreamWriter) -> None:
        writer.write(ok())
        await writer.drain()
        writer.close()  # no Connection: close: the client learns it from the socket

    srv = await serve(lambda head, body: once)
    await client.post(srv.url(), b"{}", {}, 5)
    await asyncio.sleep(0.05)
    assert client.stats()["connections"] == 0
    assert (await client.post(srv.url(), b"{}", {}, 5)).status == 200
    assert srv.accepts == 2
    await srv.close()


# -- bodies -----------------------------------------------------------------------------------


async def test_chunked_and_content_length_bodies(client: H1Client) -> None:
    answers = [chunked(b"hello", b" ", b"world"), ok(b"plain"), chunked()]
    srv = await serve(lambda head, body: answers.pop(0))
    assert (await client.post(srv.url(), b"{}", {}, 5)).body == b"hello world"
    assert (await client.post(srv.url(), b"{}", {}, 5)).body == b"plain"
    assert (await client.post(srv.url(), b"{}", {}, 5)).body == b""
    assert srv.accepts == 1
    await srv.close()


async def test_a_body_read_until_the_close(client: H1Client) -> None:
    async def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall ")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"of it")
        writer.close()

    srv = await serve(lambda head, body: until_close)
    resp = await client.post(srv.url(), b"{}", {}, 5)
    assert resp.body == b"all of it"
    await srv.close()


async def test_a_head_split_at_every_byte(client: H1Client) -> None:
    answer = ok(b'{"ok":1}', "X-Request-Id: abc", "Retry-After: 3")
    head_len = answer.index(b"\r\n\r\n") + 4
    cuts = iter(range(1, head_len + 1))

    async def split(writer: asyncio.StreamWriter) -> None:
        at = next(cuts)
        writer.write(answer[:at])
        await writer.drain()
        await asyncio.sleep(0.002)
        writer.write(answer[at:])
        await writer.drain()

    srv = await serve(lambda head, body: split)
    for _ in range(head_len):
        resp = await client.post(srv.url(), b"{}", {}, 5)
        assert resp.status == 200
        assert resp.body == b'{"ok":1}'
        assert resp.headers["x-request-id"] == "abc"
        assert resp.headers.get("Retry-After") == "3"
        assert resp.content_type == "application/json"
    assert srv.accepts == 1
    await srv.close()


async def test_the_body_cap() -> None:
    answers = [ok(b"x" * 101), chunked(b"e" * 60, b"f" * 60), ok(b"y" * 100)]
    srv = await serve(lambda head, body: answers.pop(0))
    async with H1Client(max_body=100) as c:
        with pytest.raises(H1BodyTooLarge) as declared:
            await c.post(srv.url(), b"{}", {}, 5)
        assert (declared.value.status, declared.value.head) == (200, b"")
        with pytest.raises(H1BodyTooLarge) as streamed:
            await c.post(srv.url(), b"{}", {}, 5)
        assert streamed.value.head.startswith(b"e" * 60)
        assert "100 bytes" in str(streamed.value)
        assert (await c.post(srv.url(), b"{}", {}, 5)).body == b"y" * 100
    assert srv.accepts == 3  # a connection with a body left unread is not reused
    await srv.close()


# -- failures ---------------------------------------------------------------------------------


async def test_a_server_closing_mid_body(client: H1Client) -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"x" * 100)[:-90])
        await writer.drain()
        writer.close()

    srv = await serve(lambda head, body: cut)
    with pytest.raises(H1Disconnected) as info:
        await client.post(srv.url("/v1/x?key=" + SECRET), b"{}", {"Authorization": SECRET}, 5)
    assert isinstance(info.value, ConnectionError)
    assert SECRET not in str(info.value)
    assert client.stats()["connections"] == 0
    await srv.close()


async def test_a_read_timeout_drops_the_connection(client: H1Client) -> None:
    calls = 0

    def respond(head: bytes, body: bytes) -> bytes | Writer:
        nonlocal calls
        calls += 1

        async def never(writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        return never if calls == 1 else ok()

    srv = await serve(respond)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(H1Timeout) as info:
        await client.post(srv.url("/v1/x?key=" + SECRET), b"{}", {"Authorization": SECRET}, 0.1)
    assert 0.09 <= loop.time() - started < 1
    assert isinstance(info.value, TimeoutError)
    assert SECRET not in str(info.value)
    assert (await client.post(srv.url(), b"{}", {}, 5)).status == 200
    assert srv.accepts == 2
    await srv.close()


async def test_a_connect_refused(client: H1Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(H1ConnectError) as info:
        await client.post(f"http://127.0.0.1:{port}/v1?key={SECRET}", b"{}", {"K": SECRET}, 5)
    assert isinstance(info.value, ConnectionError)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert SECRET not in str(info.value)
    assert client.stats()["connections"] == 0


async def test_a_malformed_response(client: H1Client) -> None:
    srv = await serve(lambda head, body: b"HTTP/1.1 abc\r\n\r\n")
    with pytest.raises(H1ProtocolError):
        await client.post(srv.url(), b"{}", {}, 5)
    assert client.stats()["connections"] == 0
    await srv.close()


async def test_a_head_without_end(client: H1Client) -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2_000):
            writer.write(b"X-Filler-%d: %b\r\n" % (i, b"f" * 60))
            await writer.drain()
        await asyncio.sleep(1)

    srv = await serve(lambda head, body: endless)
    with pytest.raises(H1ProtocolError, match="head is over"):
        await client.post(srv.url(), b"{}", {}, 5)
    await srv.close()


async def test_a_compressed_answer_nobody_asked_for(client: H1Client) -> None:
    srv = await serve(lambda head, body: ok(b"\x1f\x8b...", "Content-Encoding: gzip"))
    with pytest.raises(H1ProtocolError, match="compressed"):
        await client.post(srv.url(), b"{}", {}, 5)
    assert b"accept-encoding" not in srv.requests[0][0].lower()
    await srv.close()


async def test_requests_that_cannot_be_sent(client: H1Client) -> None:
    with pytest.raises(H1InvalidRequest):
        await client.post("ftp://127.0.0.1/x", b"", {}, 1)
    with pytest.raises(H1InvalidRequest) as info:
        await client.post("http://127.0.0.1:1/x", b"", {"X-Key": SECRET + "\r\nEvil: 1"}, 1)
    assert SECRET not in str(info.value)
    assert isinstance(info.value, ValueError)


async def test_a_cancelled_post_leaves_no_connection_behind(client: H1Client) -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        writer.write(ok())

    srv = await serve(lambda head, body: slow)
    task = asyncio.create_task(client.post(srv.url(), b"{}", {}, 5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.stats()["connections"] == 0
    await srv.close()


# -- streaming --------------------------------------------------------------------------------


async def test_stream_pieces_arrive_while_the_server_writes(client: H1Client) -> None:
    go_on = asyncio.Event()

    async def events(writer: asyncio.StreamWriter) -> None:
        whole = chunked(b"data: 1\n\n", b"data: 2\n\n")
        first_end = whole.index(b"data: 1\n\n") + len(b"data: 1\n\n\r\n")
        writer.write(whole[:first_end])
        await writer.drain()
        await go_on.wait()  # the client has the first event before the second is written
        writer.write(whole[first_end:])
        await writer.drain()

    answers: list[bytes | Writer] = [events, ok()]
    srv = await serve(lambda head, body: answers.pop(0))
    pieces = []
    async with client.stream_post(srv.url(), b"{}", {}, 5) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        async for piece in resp.iter_chunks(5):
            pieces.append(piece)
            go_on.set()
        assert resp.at_end
    assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
    assert (await client.post(srv.url(), b"{}", {}, 5)).status == 200
    assert srv.accepts == 1  # read to its end: the connection went back to the pool
    await srv.close()


async def test_a_partly_read_stream_is_not_reused(client: H1Client) -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(chunked(b"data: 1\n\n")[:-5])
        await writer.drain()
        await asyncio.sleep(1)

    answers: list[bytes | Writer] = [endless, ok()]
    srv = await serve(lambda head, body: answers.pop(0))
    async with client.stream_post(srv.url(), b"{}", {}, 5) as resp:
        async for _piece in resp.iter_chunks(5):
            break
    assert (await client.post(srv.url(), b"{}", {}, 5)).status == 200
    assert srv.accepts == 2
    await srv.close()


def _hang_on(word: bytes, after_s: float = 0.0) -> Respond:
    """Answers a body holding `word` never, others after `after_s`."""

    def respond(head: bytes, body: bytes) -> bytes | Writer:
        async def answer(writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(10 if word in body else after_s)
            writer.write(ok())
            await writer.drain()

        return answer

    return respond


async def test_each_post_times_out_at_its_own_deadline_one_timer_for_all() -> None:
    srv = await serve(_hang_on(b"hang", after_s=0.05))
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def post(at: float, body: bytes) -> tuple[str, float]:
        await asyncio.sleep(at)
        try:
            await c.post(srv.url(), body, {}, 0.3)
            return "ok", loop.time() - t0
        except H1Timeout:
            return "timeout", loop.time() - t0

    async with H1Client(limit_per_origin=8) as c:
        runs = [post(0, b"hang"), post(0.1, b"{}"), post(0.2, b"hang"), post(0.2, b"hang2")]
        first, answered, third, fourth = await asyncio.gather(*runs)
        shared = c._deadlines[0.3]
        assert len(shared.queue) == 0 and shared.timer is None  # nothing left armed
    assert first[0] == "timeout" and 0.29 <= first[1] < 0.45
    assert answered[0] == "ok" and answered[1] < 0.3
    assert third[0] == fourth[0] == "timeout" and 0.49 <= third[1] < 0.65  # not at the first's
    await srv.close()


async def test_many_posts_with_one_timeout_share_one_timer() -> None:
    srv = await serve(_hang_on(b"never-said", after_s=0.2))
    async with H1Client(limit_per_origin=64) as c:
        posts = [asyncio.ensure_future(c.post(srv.url(), b"{}", {}, 5)) for _ in range(50)]
        while srv.active < 50:
            await asyncio.sleep(0.01)
        shared = c._deadlines[5]
        assert len(shared.queue) == 50  # each deadline queued, one timer armed for them
        assert shared.timer is not None
        assert [r.status for r in await asyncio.gather(*posts)] == [200] * 50
    await srv.close()


async def test_finished_waits_behind_a_long_one_are_compacted_away() -> None:
    """One POST hangs at the front of the queue while thousands finish behind it: their
    entries go at a compaction, not when the front one's deadline passes."""
    from types import SimpleNamespace

    from llm_worker.adapters import h1

    shared = h1._Deadlines(asyncio.get_running_loop())
    now = asyncio.get_running_loop().time()
    hung = SimpleNamespace(turn=1, waiter=None)
    assert shared.watch(hung, now + 60)  # type: ignore[arg-type]
    for i in range(3 * h1._COMPACT_AT):
        done = SimpleNamespace(turn=1, waiter=None)
        assert shared.watch(done, now + 60 + i * 1e-6)  # type: ignore[arg-type]
        done.turn += 1  # its wait ended
    assert len(shared.queue) <= h1._COMPACT_AT + 1  # compacted, the hung one kept
    assert shared.queue[0][1] is hung
    assert not shared.watch(SimpleNamespace(turn=1, waiter=None), now)  # type: ignore[arg-type]
    shared.close()
    assert shared.timer is None and not shared.queue


async def test_a_deadline_out_of_order_gets_a_timer_of_its_own() -> None:
    """A POST that waited for a connection comes with a deadline before the newest queued one:
    it still times out at its own."""
    busy = await serve(_hang_on(b"hang", after_s=0.2))
    other = await serve(_hang_on(b"hang"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with H1Client(limit_per_origin=1) as c:
        first = asyncio.ensure_future(c.post(busy.url(), b"{}", {}, 1.0))  # holds the connection
        waiting = asyncio.ensure_future(c.post(busy.url(), b"hang", {}, 1.0))  # deadline 1.0
        await asyncio.sleep(0.1)
        later = asyncio.ensure_future(c.post(other.url(), b"hang", {}, 1.0))  # deadline 1.1
        assert (await first).status == 200
        with pytest.raises(H1Timeout):
            await waiting
        assert 0.99 <= loop.time() - t0 < 1.08
        with pytest.raises(H1Timeout):
            await later
        assert loop.time() - t0 >= 1.09
    await busy.close()
    await other.close()


async def test_a_stream_idle_timeout(client: H1Client) -> None:
    async def stall(writer: asyncio.StreamWriter) -> None:
        writer.write(chunked(b"data: 1\n\n")[:-5])
        await writer.drain()
        await asyncio.sleep(1)

    srv = await serve(lambda head, body: stall)
    async with client.stream_post(srv.url(), b"{}", {}, 5) as resp:
        got = []
        with pytest.raises(H1Timeout):
            async for piece in resp.iter_chunks(0.05):
                got.append(piece)
    assert got == [b"data: 1\n\n"]
    assert client.stats()["connections"] == 0
    await srv.close()


async def test_a_stream_cut_before_its_end(client: H1Client) -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(chunked(b"data: 1\n\n")[:-5])
        await writer.drain()
        writer.close()

    srv = await serve(lambda head, body: cut)
    async with client.stream_post(srv.url(), b"{}", {}, 5) as resp:
        with pytest.raises(H1Disconnected):
            async for _piece in resp.iter_chunks(5):
                pass
    await srv.close()


async def test_a_stream_with_a_content_length_and_read(client: H1Client) -> None:
    answers = [ok(b"whole"), ok(b"again")]
    srv = await serve(lambda head, body: answers.pop(0))
    async with client.stream_post(srv.url(), b"{}", {}, 5) as resp:
        assert b"".join([p async for p in resp.iter_chunks(5)]) == b"whole"
    async with client.stream_post(srv.url(), b"{}", {}, 5) as resp:
        assert await resp.read_capped(100) == (b"again", True)
    assert srv.accepts == 1
    await srv.close()


async def test_against_aiohttp_web() -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.query.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(3):
                await resp.write(b"data: %d\n\n" % i)
            await resp.write_eof()
            return resp
        return web.json_response({"len": len(body)}, headers={"x-request-id": "q1"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    async with H1Client() as c:
        resp = await c.post(base, b"x" * 5000, {"Authorization": "Bearer k"}, 5)
        assert (resp.status, resp.body, resp.headers["X-Request-ID"]) == (
            200,
            b'{"len": 5000}',
            "q1",
        )
        async with c.stream_post(base + "?stream=1", b"{}", {}, 5) as sresp:
            data = b"".join([p async for p in sresp.iter_chunks(5)])
        assert data == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert c.stats()["connections"] == 1
    await runner.cleanup()


# -- https ------------------------------------------------------------------------------------


_OPENSSL = (
    *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
    *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
    *("-addext", "subjectAltName=DNS:localhost"),
)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [*_OPENSSL, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return key, cert


async def test_https_verifies_the_server(certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = RawServer(lambda head, body: ok(b"secure"))
    srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.server.sockets[0].getsockname()[1]
    url = f"https://localhost:{port}/v1/chat/completions"
    trusting = ssl.create_default_context(cafile=str(cert))
    async with H1Client(ssl_context=trusting) as c:
        for _ in range(3):
            assert (await c.post(url, b"{}", {}, 5)).body == b"secure"
    assert srv.accepts == 1
    async with H1Client() as c:  # the system's roots do not know this certificate
        with pytest.raises(H1ConnectError, match=f"localhost:{port}"):
            await c.post(url, b"{}", {}, 5)
    await srv.close()


@pytest.mark.parametrize("extra", [0, 30])  # a few headers are scanned, many are tabled
def test_headers_any_case_first_of_repeats(extra: int) -> None:
    raw = [(b"Content-Type", b"application/json"), (b"X-Request-ID", b"r1")]
    raw += [(b"X-Pad-%d" % i, b"v") for i in range(extra)]
    raw += [(b"x-request-id", b"r2"), (b"Retry-After", b"\xe9")]
    h = Headers(raw)
    assert h["x-request-id"] == h.get("X-REQUEST-ID") == "r1"
    assert h.get("retry-after") == "\xe9"  # latin-1, as HTTP has it
    assert h.get("missing") is None and h.get("missing", "d") == "d"
    assert h.get("cl\u00e9\u20ac") is None  # no header is named outside latin-1
    assert "content-type" in h and "Content-Type" in h and "nope" not in h and 1 not in h
    with pytest.raises(KeyError):
        h["nope"]
    assert len(h) == 3 + extra
    assert list(h)[:2] == ["content-type", "x-request-id"]
    assert h.get("X-Request-Id") == "r1"  # after the table is built too
    assert "r1" not in repr(h) and "x-request-id" in repr(h)


async def test_framing_headers_read_in_any_case(client: H1Client) -> None:
    body = b'{"ok":1}'
    head = b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: %d\r\ncontent-encoding: Identity \r\n\r\n"
    srv = await serve(lambda h, b: head % len(body) + body)
    resp = await client.post(srv.url(), b"{}", {}, 5)
    assert (resp.status, resp.body, resp.headers["Content-Length"]) == (200, body, "8")
    gz = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Encoding: gzip\r\n\r\nzz"
    srv2 = await serve(lambda h, b: gz)
    with pytest.raises(H1ProtocolError):
        await client.post(srv2.url(), b"{}", {}, 5)
    await srv.close()
    await srv2.close()
