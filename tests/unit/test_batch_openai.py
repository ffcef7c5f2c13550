"""OpenAI's Batch API client: the wire it writes and reads (golden lines from OpenAI's docs),
then a round trip against a small local server speaking that wire.

Documented shapes: the batch guide https://platform.openai.com/docs/guides/batch (input and
output lines), the batch object https://platform.openai.com/docs/api-reference/batch/object
(also https://developers.openai.com/api/reference/python/resources/batches/methods/retrieve/),
the request output object https://platform.openai.com/docs/api-reference/batch/request-output.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from llm_worker.adapters.base import Message, ProviderRequest, Target
from llm_worker.adapters.batch import BatchItem, BatchLimits
from llm_worker.adapters.batch_clients import batch_client_for
from llm_worker.adapters.batch_gemini import GeminiBatchClient
from llm_worker.adapters.batch_openai import OpenAIBatchClient, job_of
from llm_worker.adapters.batch_openai import _decode_batch as decode_batch
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContextLengthExceeded,
    NotFound,
    ServerError,
)
from llm_worker.adapters.secrets import Secret

KEY = "sk-test-0123456789abcdefSECRET"
HELLO = ProviderRequest(
    messages=(Message("system", "You are a helpful assistant."), Message("user", "Hello world!"))
)


def target(endpoint: str = "https://api.openai.com/v1", key: str | None = KEY) -> Target:
    return Target(
        provider="openai",
        endpoint=endpoint,
        model="gpt-3.5-turbo-0125",
        endpoint_name="primary:openai",
        api_key=None if key is None else Secret("openai", key),
    )


def item(custom_id: str, text: str = "Hello world!") -> BatchItem:
    return BatchItem(custom_id=custom_id, request=ProviderRequest(prompt=text))


# -- the wire, golden -----------------------------------------------------------------------

# the batch guide's input line (its `max_tokens` left out: our adapter sends
# `max_completion_tokens`, tested with the online adapter)
GUIDE_LINE = {
    "custom_id": "request-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {
        "model": "gpt-3.5-turbo-0125",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello world!"},
        ],
    },
}

# the API reference's batch object
BATCH_OBJECT = {
    "id": "batch_abc123",
    "object": "batch",
    "endpoint": "/v1/completions",
    "errors": None,
    "input_file_id": "file-abc123",
    "completion_window": "24h",
    "status": "completed",
    "output_file_id": "file-cvaTdG",
    "error_file_id": "file-HOWS94",
    "created_at": 1711471533,
    "in_progress_at": 1711471538,
    "expires_at": 1711557933,
    "finalizing_at": 1711493133,
    "completed_at": 1711493163,
    "failed_at": None,
    "expired_at": None,
    "cancelling_at": None,
    "cancelled_at": None,
    "request_counts": {"total": 100, "completed": 95, "failed": 5},
    "metadata": {"customer_id": "user_123456789", "batch_description": "Nightly eval job"},
}

# the batch guide's output lines: one answered, one expired
OUTPUT_LINE: dict[str, Any] = {
    "id": "batch_req_123",
    "custom_id": "request-2",
    "response": {
        "status_code": 200,
        "request_id": "req_123",
        "body": {
            "id": "chatcmpl-123",
            "object": "chat.completion",
            "created": 1711652795,
            "model": "gpt-3.5-turbo-0125",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24},
            "system_fingerprint": "fp_123",
        },
    },
    "error": None,
}
EXPIRED_LINE = {
    "id": "batch_req_456",
    "custom_id": "request-1",
    "response": None,
    "error": {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    },
}
REFUSED_LINE = {
    "id": "batch_req_789",
    "custom_id": "request-3",
    "response": {
        "status_code": 400,
        "request_id": "req_789",
        "body": {
            "error": {
                "message": "This model's maximum context length is 16385 tokens.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
    },
    "error": None,
}


def line_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_encode_line_is_the_guides_line() -> None:
    client = OpenAIBatchClient()
    line = client.encode_line(target(), BatchItem(custom_id="request-1", request=HELLO))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == GUIDE_LINE


def test_encode_line_body_is_the_online_adapters() -> None:
    client = OpenAIBatchClient()
    request = ProviderRequest(prompt="Hi", max_tokens=1000, temperature=0.2)
    body = json.loads(client.encode_line(target(), BatchItem(custom_id="r", request=request)))
    assert body["body"] == json.loads(client.adapter.build_body(target(), request))
    assert body["body"]["max_completion_tokens"] == 1000


def test_the_documented_batch_object() -> None:
    job = job_of(decode_batch(line_bytes(BATCH_OBJECT)))
    assert job.id == "batch_abc123"
    assert (job.state, job.provider_state) == ("ended", "completed")
    assert (job.requests, job.succeeded, job.errored) == (100, 95, 5)
    assert job.created_at == datetime.fromtimestamp(1711471533, UTC)
    assert job.job_key is None  # its metadata has no llm_worker_job


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("validating", "submitted"),
        ("in_progress", "in_progress"),
        ("finalizing", "in_progress"),
        ("completed", "ended"),
        ("failed", "failed"),
        ("expired", "expired"),
        ("cancelling", "cancelling"),
        ("cancelled", "cancelled"),
        ("some_new_status", "in_progress"),  # unknown: polled on, never given up
    ],
)
def test_status_mapping(status: str, state: str) -> None:
    job = job_of(decode_batch(line_bytes(BATCH_OBJECT | {"status": status})))
    assert (job.state, job.provider_state) == (state, status)


def test_an_expired_jobs_unanswered_requests_count_as_errored() -> None:
    doc = BATCH_OBJECT | {
        "status": "expired",
        "request_counts": {"total": 10, "completed": 6, "failed": 1},
    }
    assert job_of(decode_batch(line_bytes(doc))).errored == 4


def test_documented_result_lines() -> None:
    client = OpenAIBatchClient()
    answered = client._result(target(), line_bytes(OUTPUT_LINE))
    assert answered.custom_id == "request-2" and answered.error is None
    assert answered.result is not None
    assert answered.result.text == "Hello."
    assert answered.result.finish_reason == "stop"
    assert (answered.result.input_tokens, answered.result.output_tokens) == (22, 2)
    assert answered.result.request_id == "req_123"
    assert answered.result.response_id == "chatcmpl-123"

    expired = client._result(target(), line_bytes(EXPIRED_LINE))
    assert (expired.custom_id, expired.expired, expired.result, expired.error) == (
        "request-1",
        True,
        None,
        None,
    )

    refused = client._result(target(), line_bytes(REFUSED_LINE))
    assert isinstance(refused.error, ContextLengthExceeded)
    assert refused.error.status == 400 and refused.error.request_id == "req_789"
    assert "maximum context length" in str(refused.error)


def test_a_cancelled_request_is_expired_and_another_line_error_is_a_server_error() -> None:
    client = OpenAIBatchClient()
    cancelled = EXPIRED_LINE | {"error": {"code": "batch_cancelled", "message": "cancelled"}}
    assert client._result(target(), line_bytes(cancelled)).expired
    odd = EXPIRED_LINE | {"error": {"code": "server_error", "message": "try again"}}
    result = client._result(target(), line_bytes(odd))
    assert isinstance(result.error, ServerError) and not result.expired
    assert "try again (server_error)" in str(result.error)


def test_an_answer_that_does_not_parse_is_a_server_error() -> None:
    client = OpenAIBatchClient()
    broken = OUTPUT_LINE | {"response": {"status_code": 200, "body": {"choices": []}}}
    result = client._result(target(), line_bytes(broken))
    assert isinstance(result.error, ServerError) and "malformed response" in str(result.error)


async def test_the_size_limit_counts_encode_lines_bytes() -> None:
    items = [item(f"job-{n}") for n in range(3)]
    size = sum(len(OpenAIBatchClient().encode_line(target(), i)) for i in items)
    # refused before any call: the endpoint is unreachable, the error says why
    unreachable = target("http://127.0.0.1:9/v1")
    too_small = OpenAIBatchClient(limits=BatchLimits(max_requests=10, max_bytes=size - 1))
    with pytest.raises(BadRequest, match=f"{size} bytes of requests"):
        await too_small.submit(unreachable, items, "job")
    too_few = OpenAIBatchClient(limits=BatchLimits(max_requests=2, max_bytes=size))
    with pytest.raises(BadRequest, match="3 requests: a batch job holds at most 2"):
        await too_few.submit(unreachable, items, "job")
    with pytest.raises(BadRequest, match="at least one request"):
        await too_few.submit(unreachable, [], "job")


def test_the_documented_limits() -> None:
    assert OpenAIBatchClient().limits == BatchLimits(50_000, 200 * 1024 * 1024)


def test_batch_client_for() -> None:
    assert isinstance(batch_client_for("openai"), OpenAIBatchClient)
    fake = batch_client_for("fake")
    assert isinstance(fake, OpenAIBatchClient) and fake.provider == "fake"
    assert batch_client_for("anthropic") is not None
    assert isinstance(batch_client_for("gemini"), GeminiBatchClient)
    assert batch_client_for("huggingface") is None


# -- a local server speaking the wire ---------------------------------------------------------


class OpenAIBatches:
    """Files and batches as OpenAI keeps them, in memory; the test moves a batch on."""

    PAGE = 2  # the list pages by 2, whatever the limit asked, so paging is exercised

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # creation order
        self.uploads: list[tuple[str, str, int]] = []  # purpose, filename, bytes
        self.fail: tuple[int, dict[str, Any]] | None = None
        self.clock = 1_800_000_000
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.fail is not None:
            status, body = self.fail
            return web.json_response(body, status=status)
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": {"message": "no key"}}, status=401)
        path, method = request.path, request.method
        if path == "/v1/files" and method == "POST":
            form = await request.post()
            upload = form["file"]
            assert isinstance(upload, web.FileField)
            data = upload.file.read()
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = data
            self.uploads.append((str(form["purpose"]), upload.filename, len(data)))
            return web.json_response({"id": file_id, "object": "file", "purpose": "batch"})
        if path.startswith("/v1/files/") and path.endswith("/content"):
            return web.Response(body=self.files[path.split("/")[3]])
        if path == "/v1/batches" and method == "POST":
            spec = await request.json()
            assert spec["endpoint"] == "/v1/chat/completions"
            assert spec["completion_window"] == "24h"
            self.clock += 10
            batch_id = f"batch_{len(self.batches)}"
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": spec["endpoint"],
                "input_file_id": spec["input_file_id"],
                "completion_window": "24h",
                "status": "validating",
                "created_at": self.clock,
                "output_file_id": None,
                "error_file_id": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": spec.get("metadata"),
            }
            self.order.append(batch_id)
            return web.json_response(self.batches[batch_id])
        if path == "/v1/batches" and method == "GET":
            newest = list(reversed(self.order))
            after = request.query.get("after")
            start = newest.index(after) + 1 if after else 0
            page = newest[start : start + self.PAGE]
            return web.json_response(
                {
                    "object": "list",
                    "data": [self.batches[b] for b in page],
                    "first_id": page[0] if page else None,
                    "last_id": page[-1] if page else None,
                    "has_more": start + self.PAGE < len(newest),
                }
            )
        parts = path.split("/")  # "", v1, batches, id[, cancel]
        batch = self.batches.get(parts[3]) if len(parts) > 3 else None
        if batch is None:
            return web.json_response({"error": {"message": "No batch found"}}, status=404)
        if len(parts) == 5 and parts[4] == "cancel" and method == "POST":
            batch["status"] = "cancelling"
        return web.json_response(batch)

    def run(self, batch_id: str, *, answer: int | None = None, status: str = "completed") -> None:
        """Answer the first `answer` requests of the batch (all by default): "echo: <text>"."""
        batch = self.batches[batch_id]
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].splitlines()]
        out, errors = [], []
        for n, line in enumerate(lines[: len(lines) if answer is None else answer]):
            text = line["body"]["messages"][-1]["content"]
            if text == "refuse":
                errors.append(REFUSED_LINE | {"custom_id": line["custom_id"]})
                continue
            body = OUTPUT_LINE["response"]["body"] | {
                "id": f"chatcmpl-{n}",
                "choices": [
                    {"index": 0, "message": {"content": f"echo: {text}"}, "finish_reason": "stop"}
                ],
            }
            out.append(
                {
                    "id": f"batch_req_{n}",
                    "custom_id": line["custom_id"],
                    "response": {"status_code": 200, "request_id": f"req_{n}", "body": body},
                    "error": None,
                }
            )
        if answer is not None:  # the next one expired in the error file; the rest in neither
            errors.extend(EXPIRED_LINE | {"custom_id": x["custom_id"]} for x in lines[answer:][:1])
        for key, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = b"".join(line_bytes(r) + b"\n" for r in rows)
                batch[key] = file_id
        batch["status"] = status
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(out),
            "failed": sum(1 for e in errors if e["response"]),
        }


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[OpenAIBatches]:
    fake = OpenAIBatches()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[OpenAIBatches]:
    async with serve() as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[OpenAIBatchClient]:
    c = OpenAIBatchClient()
    yield c
    await c.close()


async def test_submit_get_results_round_trip(
    server: OpenAIBatches, client: OpenAIBatchClient
) -> None:
    t = target(server.base)
    items = [item("job7-0", "a"), item("job7-1", "b"), item("job7-2", "refuse")]
    job = await client.submit(t, items, "job7")
    assert (job.state, job.provider_state, job.job_key) == ("submitted", "validating", "job7")
    size = sum(len(client.encode_line(t, i)) for i in items)
    assert server.uploads == [("batch", "job7.jsonl", size)]

    assert (await client.get(t, job.id)).state == "submitted"
    with pytest.raises(BadRequest, match="not ready"):
        await client.results(t, job.id)

    server.run(job.id)
    done = await client.get(t, job.id)
    assert (done.state, done.requests, done.succeeded, done.errored) == ("ended", 3, 2, 1)
    results = {r.custom_id: r for r in await client.results(t, job.id)}
    assert set(results) == {"job7-0", "job7-1", "job7-2"}
    assert results["job7-0"].result is not None
    assert results["job7-0"].result.text == "echo: a"
    assert results["job7-1"].result is not None
    assert results["job7-1"].result.text == "echo: b"
    assert isinstance(results["job7-2"].error, ContextLengthExceeded)


async def test_an_expired_jobs_missing_requests_come_back_expired(
    server: OpenAIBatches, client: OpenAIBatchClient
) -> None:
    t = target(server.base)
    job = await client.submit(t, [item(f"k-{n}", str(n)) for n in range(4)], "k")
    server.run(job.id, answer=1, status="expired")
    results = {r.custom_id: r for r in await client.results(t, job.id)}
    assert results["k-0"].result is not None and not results["k-0"].expired
    assert [results[f"k-{n}"].expired for n in (1, 2, 3)] == [True, True, True]
    assert all(results[f"k-{n}"].error is None for n in (1, 2, 3))


async def test_find_by_job_key_and_since(server: OpenAIBatches, client: OpenAIBatchClient) -> None:
    t = target(server.base)
    first = await client.submit(t, [item("a-0")], "a")
    for key in ("b", "c", "d", "e"):  # "a" is on the third page now
        await client.submit(t, [item(f"{key}-0")], key)
    found = await client.find(t, "a", datetime(2020, 1, 1, tzinfo=UTC))
    assert found is not None and (found.id, found.job_key) == (first.id, "a")
    assert await client.find(t, "zzz", datetime(2020, 1, 1, tzinfo=UTC)) is None
    later = datetime.fromtimestamp(server.batches[first.id]["created_at"] + 1, UTC)
    assert await client.find(t, "a", later) is None  # created before `since`
    assert (await client.find(t, "e", later)) is not None


async def test_cancel(server: OpenAIBatches, client: OpenAIBatchClient) -> None:
    t = target(server.base)
    job = await client.submit(t, [item("c-0")], "c")
    cancelling = await client.cancel(t, job.id)
    assert (cancelling.id, cancelling.state) == (job.id, "cancelling")


async def test_a_401_is_an_auth_error_without_the_key(
    server: OpenAIBatches, client: OpenAIBatchClient
) -> None:
    server.fail = (
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {KEY}. You can find your API key at...",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
    )
    with pytest.raises(AuthError) as caught:
        await client.get(target(server.base), "batch_0")
    assert caught.value.status == 401
    assert "Incorrect API key provided" in str(caught.value)
    assert KEY not in str(caught.value) and KEY[:12] not in str(caught.value)


async def test_a_500_is_a_server_error(server: OpenAIBatches, client: OpenAIBatchClient) -> None:
    server.fail = (500, {"error": {"message": "The server had an error", "type": "server_error"}})
    with pytest.raises(ServerError, match="The server had an error") as caught:
        await client.submit(target(server.base), [item("x-0")], "x")
    assert caught.value.retryable and caught.value.status == 500


async def test_an_unknown_batch_is_not_found(
    server: OpenAIBatches, client: OpenAIBatchClient
) -> None:
    with pytest.raises(NotFound):
        await client.get(target(server.base), "batch_nope")


async def test_a_refused_connection_is_connection_failed(client: OpenAIBatchClient) -> None:
    with pytest.raises(ConnectionFailed) as caught:
        await client.get(target("http://127.0.0.1:9/v1"), "batch_0")
    assert KEY not in str(caught.value)


async def test_a_job_that_failed_validation_gives_its_errors_to_every_request(
    server: OpenAIBatches, client: OpenAIBatchClient
) -> None:
    t = target(server.base)
    job = await client.submit(t, [item("v-0"), item("v-1")], "v")
    server.batches[job.id] |= {
        "status": "failed",
        "errors": {
            "object": "list",
            "data": [{"code": "invalid_json_line", "message": "bad line", "line": 2}],
        },
    }
    assert (await client.get(t, job.id)).state == "failed"
    results = await client.results(t, job.id)
    assert sorted(r.custom_id for r in results) == ["v-0", "v-1"]
    for r in results:
        assert isinstance(r.error, BadRequest) and not r.expired
        assert "failed validation: bad line (line 2)" in str(r.error)
