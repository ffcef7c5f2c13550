"""Anthropic's Message Batches client: the wire it writes and reads (golden shapes from
Anthropic's docs), then a round trip against a small local server speaking that wire.

Documented shapes: the batch processing guide
https://docs.claude.com/en/docs/build-with-claude/batch-processing (requests, result lines of
each type), the API reference https://platform.claude.com/docs/en/api/messages/batches/create
(custom_id: 1-64 of [a-zA-Z0-9_-], at most 100,000 requests), .../batches/retrieve (the
message batch object), .../batches/results (the JSONL lines), and the examples page
https://docs.anthropic.com/en/api/messages-batch-examples.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from llm_worker.adapters.anthropic import ANTHROPIC_VERSION
from llm_worker.adapters.base import Message, ProviderRequest, Target
from llm_worker.adapters.batch import BatchItem, BatchLimits
from llm_worker.adapters.batch_anthropic import AnthropicBatchClient, job_of
from llm_worker.adapters.batch_anthropic import _decode_batch as decode_batch
from llm_worker.adapters.batch_clients import batch_client_for
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContextLengthExceeded,
    NotFound,
    Overloaded,
    ServerError,
)
from llm_worker.adapters.secrets import Secret

KEY = "sk-ant-api03-0123456789abcdefSECRET"
MODEL = "claude-sonnet-4-5"


def target(endpoint: str = "https://api.anthropic.com", key: str | None = KEY) -> Target:
    return Target(
        provider="anthropic",
        endpoint=endpoint,
        model=MODEL,
        endpoint_name="primary:anthropic",
        api_key=None if key is None else Secret("anthropic", key),
    )


def item(custom_id: str, text: str = "Hello, world") -> BatchItem:
    return BatchItem(
        custom_id=custom_id,
        request=ProviderRequest(messages=(Message("user", text),), max_tokens=1024),
    )


def line_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# -- the wire, golden -----------------------------------------------------------------------

# the examples page's first request
GUIDE_REQUEST = {
    "custom_id": "my-first-request",
    "params": {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, world"}],
    },
}

# the API reference's message batch object
BATCH_OBJECT = {
    "id": "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF",
    "archived_at": "2024-08-20T18:37:24.100435Z",
    "cancel_initiated_at": "2024-08-20T18:37:24.100435Z",
    "created_at": "2024-08-20T18:37:24.100435Z",
    "ended_at": "2024-08-20T18:37:24.100435Z",
    "expires_at": "2024-08-20T18:37:24.100435Z",
    "processing_status": "in_progress",
    "request_counts": {
        "canceled": 10,
        "errored": 30,
        "expired": 10,
        "processing": 100,
        "succeeded": 50,
    },
    "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_013Zva2CMHLNnXjNJJKqJ2EF/results",
    "type": "message_batch",
}

# the guide's result lines, one of each type
SUCCEEDED: dict[str, Any] = {
    "custom_id": "my-second-request",
    "result": {
        "type": "succeeded",
        "message": {
            "id": "msg_014VwiXbi91y3JMjcpyGBHX5",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hello again! It's nice to see you."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 36},
        },
    },
}
ERRORED = {
    "custom_id": "my-third-request",
    "result": {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "prompt is too long: 9 > 8"},
        },
    },
}
ERRORED_FLAT = {  # the older guide's shape: the error type and message at once
    "custom_id": "my-first-request",
    "result": {
        "type": "errored",
        "error": {"type": "invalid_request", "message": "Validation error: max_tokens"},
    },
}
CANCELED = {"custom_id": "my-fourth-request", "result": {"type": "canceled"}}
EXPIRED = {"custom_id": "my-fifth-request", "result": {"type": "expired"}}


def test_encode_line_is_the_documented_request() -> None:
    client = AnthropicBatchClient()
    entry = client.encode_line(target(), item("my-first-request"))
    assert json.loads(entry) == GUIDE_REQUEST


def test_the_params_are_the_online_adapters_body() -> None:
    client = AnthropicBatchClient()
    request = ProviderRequest(
        messages=(Message("system", "Be brief."), Message("user", "Hi")), stop=("END",)
    )
    entry = json.loads(client.encode_line(target(), BatchItem(custom_id="a", request=request)))
    assert entry["params"] == json.loads(client.adapter.build_body(target(), request))
    assert entry["params"]["system"] == "Be brief."


@pytest.mark.parametrize("custom_id", ["", "a" * 65, "job:1", "job 1", "jöb-1"])
def test_a_custom_id_anthropic_refuses_is_refused_first(custom_id: str) -> None:
    with pytest.raises(BadRequest, match="custom_id"):
        AnthropicBatchClient().encode_line(target(), item(custom_id))


def test_the_documented_batch_object() -> None:
    job = job_of(decode_batch(line_bytes(BATCH_OBJECT)))
    assert job.id == "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF"
    assert (job.state, job.provider_state) == ("in_progress", "in_progress")
    assert (job.requests, job.succeeded, job.errored) == (200, 50, 50)
    assert job.created_at == datetime(2024, 8, 20, 18, 37, 24, 100435, tzinfo=UTC)
    assert job.job_key is None


@pytest.mark.parametrize(
    ("status", "state"),
    [("in_progress", "in_progress"), ("canceling", "cancelling"), ("ended", "ended")],
)
def test_status_mapping(status: str, state: str) -> None:
    job = job_of(decode_batch(line_bytes(BATCH_OBJECT | {"processing_status": status})))
    assert (job.state, job.provider_state) == (state, status)


def test_documented_result_lines() -> None:
    client = AnthropicBatchClient()
    ok = client._result(target(), line_bytes(SUCCEEDED))
    assert ok.custom_id == "my-second-request" and ok.error is None and not ok.expired
    assert ok.result is not None
    assert ok.result.text == "Hello again! It's nice to see you."
    assert ok.result.finish_reason == "stop"
    assert (ok.result.input_tokens, ok.result.output_tokens) == (11, 36)
    assert ok.result.response_id == "msg_014VwiXbi91y3JMjcpyGBHX5"

    errored = client._result(target(), line_bytes(ERRORED))
    assert isinstance(errored.error, ContextLengthExceeded)
    assert errored.error.status == 400 and "prompt is too long" in str(errored.error)
    flat = client._result(target(), line_bytes(ERRORED_FLAT))
    assert isinstance(flat.error, BadRequest) and "Validation error" in str(flat.error)

    for line in (CANCELED, EXPIRED):
        result = client._result(target(), line_bytes(line))
        assert (result.custom_id, result.expired, result.result, result.error) == (
            line["custom_id"],
            True,
            None,
            None,
        )


def test_an_errored_result_is_classified_by_its_type() -> None:
    client = AnthropicBatchClient()
    overloaded = ERRORED | {
        "result": {
            "type": "errored",
            "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
        }
    }
    result = client._result(target(), line_bytes(overloaded))
    assert isinstance(result.error, Overloaded) and result.error.retryable


def test_the_documented_limits() -> None:
    assert AnthropicBatchClient().limits == BatchLimits(100_000, 256 * 1024 * 1024)
    assert isinstance(batch_client_for("anthropic"), AnthropicBatchClient)


async def test_the_size_limit_counts_encode_lines_bytes() -> None:
    items = [item(f"job-{n}") for n in range(3)]
    size = sum(len(AnthropicBatchClient().encode_line(target(), i)) for i in items)
    unreachable = target("http://127.0.0.1:9")
    client = AnthropicBatchClient(limits=BatchLimits(max_requests=10, max_bytes=size - 1))
    with pytest.raises(BadRequest, match=f"{size} bytes of requests"):
        await client.submit(unreachable, items, "job")


# -- a local server speaking the wire ---------------------------------------------------------


class AnthropicBatches:
    """Message batches as Anthropic keeps them, in memory; the test moves a batch on."""

    PAGE = 2

    def __init__(self) -> None:
        self.batches: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self.results: dict[str, bytes] = {}
        self.order: list[str] = []
        self.fail: tuple[int, dict[str, Any]] | None = None
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.base = ""
        self.results_host = ""  # where results_url points (default: this server)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.fail is not None:
            status, body = self.fail
            return web.json_response(body, status=status)
        if request.headers.get("x-api-key") != KEY:
            return web.json_response(
                {"type": "error", "error": {"type": "authentication_error", "message": "no"}},
                status=401,
            )
        assert request.headers.get("anthropic-version") == ANTHROPIC_VERSION
        path, method = request.path, request.method
        root = "/v1/messages/batches"
        if path == root and method == "POST":
            body = await request.json()
            self.clock += timedelta(seconds=10)
            batch_id = f"msgbatch_{len(self.batches):04d}"
            self.requests[batch_id] = body["requests"]
            self.batches[batch_id] = {
                "id": batch_id,
                "type": "message_batch",
                "processing_status": "in_progress",
                "request_counts": {
                    "processing": len(body["requests"]),
                    "succeeded": 0,
                    "errored": 0,
                    "canceled": 0,
                    "expired": 0,
                },
                "created_at": self.clock.isoformat().replace("+00:00", "Z"),
                "results_url": None,
            }
            self.order.append(batch_id)
            return web.json_response(self.batches[batch_id])
        if path == root and method == "GET":
            newest = list(reversed(self.order))
            after = request.query.get("after_id")
            start = newest.index(after) + 1 if after else 0
            page = newest[start : start + self.PAGE]
            return web.json_response(
                {
                    "data": [self.batches[b] for b in page],
                    "has_more": start + self.PAGE < len(newest),
                    "first_id": page[0] if page else None,
                    "last_id": page[-1] if page else None,
                }
            )
        parts = path.removeprefix(root + "/").split("/")
        batch = self.batches.get(parts[0])
        if batch is None:
            return web.json_response(
                {"type": "error", "error": {"type": "not_found_error", "message": "no batch"}},
                status=404,
            )
        if parts[1:] == ["results"]:
            return web.Response(body=self.results[parts[0]], content_type="application/binary")
        if parts[1:] == ["cancel"] and method == "POST":
            batch["processing_status"] = "canceling"
        return web.json_response(batch)

    def end(self, batch_id: str, *, answer: int | None = None) -> None:
        """End the batch: the first `answer` requests echoed (all by default), the rest
        canceled; a request saying "too long" errored."""
        requests = self.requests[batch_id]
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines = []
        for n, entry in enumerate(requests):
            text = entry["params"]["messages"][-1]["content"]
            if answer is not None and n >= answer:
                lines.append({"custom_id": entry["custom_id"], "result": {"type": "canceled"}})
                counts["canceled"] += 1
            elif text == "too long":
                lines.append(ERRORED | {"custom_id": entry["custom_id"]})
                counts["errored"] += 1
            else:
                message = SUCCEEDED["result"]["message"] | {
                    "id": f"msg_{n}",
                    "content": [{"type": "text", "text": f"echo: {text}"}],
                }
                lines.append(
                    {
                        "custom_id": entry["custom_id"],
                        "result": {"type": "succeeded", "message": message},
                    }
                )
                counts["succeeded"] += 1
        self.results[batch_id] = b"".join(line_bytes(x) + b"\n" for x in reversed(lines))
        host = self.results_host or self.base
        self.batches[batch_id] |= {
            "processing_status": "ended",
            "request_counts": counts,
            "results_url": f"{host}/v1/messages/batches/{batch_id}/results",
        }


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[AnthropicBatches]:
    fake = AnthropicBatches()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[AnthropicBatches]:
    async with serve() as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[AnthropicBatchClient]:
    c = AnthropicBatchClient()
    yield c
    await c.close()


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/"])
async def test_submit_get_results_round_trip(
    server: AnthropicBatches, client: AnthropicBatchClient, suffix: str
) -> None:
    t = target(server.base + suffix)
    items = [item("job7-0", "a"), item("job7-1", "b"), item("job7-2", "too long")]
    job = await client.submit(t, items, "job7")
    assert (job.state, job.requests, job.succeeded) == ("in_progress", 3, 0)
    assert [r["custom_id"] for r in server.requests[job.id]] == ["job7-0", "job7-1", "job7-2"]

    assert (await client.get(t, job.id)).state == "in_progress"
    with pytest.raises(BadRequest, match="not ready"):
        await client.results(t, job.id)

    server.end(job.id)
    done = await client.get(t, job.id)
    assert (done.state, done.requests, done.succeeded, done.errored) == ("ended", 3, 2, 1)
    results = {r.custom_id: r for r in await client.results(t, job.id)}
    assert set(results) == {"job7-0", "job7-1", "job7-2"}
    assert results["job7-0"].result is not None
    assert results["job7-0"].result.text == "echo: a"
    assert results["job7-1"].result is not None
    assert results["job7-1"].result.text == "echo: b"
    assert isinstance(results["job7-2"].error, ContextLengthExceeded)


async def test_cancel_then_the_canceled_requests_come_back_expired(
    server: AnthropicBatches, client: AnthropicBatchClient
) -> None:
    t = target(server.base)
    job = await client.submit(t, [item(f"k-{n}", str(n)) for n in range(3)], "k")
    cancelling = await client.cancel(t, job.id)
    assert (cancelling.id, cancelling.state, cancelling.provider_state) == (
        job.id,
        "cancelling",
        "canceling",
    )
    server.end(job.id, answer=1)
    results = {r.custom_id: r for r in await client.results(t, job.id)}
    assert results["k-0"].result is not None
    assert [results[f"k-{n}"].expired for n in (1, 2)] == [True, True]


async def test_find_reads_the_custom_ids_of_ended_batches(
    server: AnthropicBatches, client: AnthropicBatchClient
) -> None:
    t = target(server.base)
    since = datetime(2025, 1, 1, tzinfo=UTC)
    first = await client.submit(t, [item("a-0"), item("a-1")], "a")
    for key in ("ab", "c", "d", "e"):  # "a" is on the third page; "ab-0" does not start "a-"
        await client.submit(t, [item(f"{key}-0")], key)
    assert await client.find(t, "a", since) is None  # not ended: it cannot be read
    server.end(first.id)
    for batch_id in server.order[1:]:
        server.end(batch_id)
    found = await client.find(t, "a", since)
    assert found is not None and found.id == first.id
    assert await client.find(t, "zzz", since) is None
    later = datetime.fromisoformat(server.batches[first.id]["created_at"]) + timedelta(seconds=1)
    assert await client.find(t, "a", later) is None  # created before `since`
    found_e = await client.find(t, "e", later)
    assert found_e is not None and found_e.id == server.order[-1]


async def test_results_url_on_another_origin_is_not_followed(
    server: AnthropicBatches, client: AnthropicBatchClient
) -> None:
    t = target(server.base)
    job = await client.submit(t, [item("r-0", "x")], "r")
    server.results_host = "http://127.0.0.1:9"  # would refuse, and must not get the key
    server.end(job.id)
    [result] = await client.results(t, job.id)
    assert result.result is not None and result.result.text == "echo: x"


async def test_a_401_is_an_auth_error_without_the_key(
    server: AnthropicBatches, client: AnthropicBatchClient
) -> None:
    server.fail = (
        401,
        {
            "type": "error",
            "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        },
    )
    with pytest.raises(AuthError) as caught:
        await client.get(target(server.base), "msgbatch_0000")
    assert caught.value.status == 401
    assert caught.value.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert "invalid x-api-key" in str(caught.value)
    assert KEY not in str(caught.value) and KEY[:12] not in str(caught.value)


async def test_a_500_is_a_server_error(
    server: AnthropicBatches, client: AnthropicBatchClient
) -> None:
    server.fail = (500, {"type": "error", "error": {"type": "api_error", "message": "oops"}})
    with pytest.raises(ServerError, match="oops") as caught:
        await client.submit(target(server.base), [item("x-0")], "x")
    assert caught.value.retryable and caught.value.status == 500


async def test_an_unknown_batch_is_not_found(
    server: AnthropicBatches, client: AnthropicBatchClient
) -> None:
    with pytest.raises(NotFound):
        await client.get(target(server.base), "msgbatch_nope")


async def test_a_refused_connection_is_connection_failed(client: AnthropicBatchClient) -> None:
    with pytest.raises(ConnectionFailed) as caught:
        await client.get(target("http://127.0.0.1:9"), "msgbatch_0")
    assert KEY not in str(caught.value)
