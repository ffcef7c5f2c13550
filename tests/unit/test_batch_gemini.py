"""Gemini's Batch API client: the wire it writes and reads (golden shapes from Google's docs),
then a round trip against a small local server speaking that wire.

Documented shapes: the guide https://ai.google.dev/gemini-api/docs/batch-api (the REST create
body with inline requests, `.name`, `.metadata.state`, `.response.inlinedResponses`, the
`:cancel` and list calls, the JOB_STATE_* names, the 20 MB inline limit) and the reference
https://ai.google.dev/api/batch-mode (the batch's fields, `batchStats`, `batches/{batchId}`).
The docs have no full JSON batch object: `OPERATION` is assembled from those field lists.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from aiohttp import web

from llm_worker.adapters.base import Message, ProviderRequest, Target
from llm_worker.adapters.batch import BatchItem, BatchLimits
from llm_worker.adapters.batch_clients import BATCH_PROVIDERS, batch_client_for
from llm_worker.adapters.batch_gemini import GeminiBatchClient, job_of
from llm_worker.adapters.batch_gemini import _decode_operation as decode_operation
from llm_worker.adapters.batch_gemini import _Inlined as Inlined
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    NotFound,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.secrets import Secret

KEY = "AIzaSyA0123456789abcdefSECRETkey"
MODEL = "gemini-2.5-flash"


def target(
    endpoint: str = "https://generativelanguage.googleapis.com", key: str | None = KEY
) -> Target:
    return Target(
        provider="gemini",
        endpoint=endpoint,
        model=MODEL,
        endpoint_name="primary:gemini",
        api_key=None if key is None else Secret("gemini", key),
    )


def item(custom_id: str, text: str = "Describe the process of photosynthesis.") -> BatchItem:
    return BatchItem(
        custom_id=custom_id, request=ProviderRequest(messages=(Message("user", text),))
    )


def entry_of(doc: dict[str, Any]) -> Inlined:
    return msgspec.json.decode(json.dumps(doc).encode(), type=Inlined)


# -- the wire, golden -----------------------------------------------------------------------

# the guide's REST create body (inline requests)
GUIDE_CREATE = {
    "batch": {
        "display_name": "my-batch-requests",
        "input_config": {
            "requests": {
                "requests": [
                    {
                        "request": {
                            "contents": [
                                {"parts": [{"text": "Describe the process of photosynthesis."}]}
                            ]
                        },
                        "metadata": {"key": "request-1"},
                    },
                    {
                        "request": {
                            "contents": [
                                {"parts": [{"text": "Describe the process of photosynthesis."}]}
                            ]
                        },
                        "metadata": {"key": "request-2"},
                    },
                ]
            }
        },
    }
}

# an operation with the reference's batch fields (int64 counts as strings)
OPERATION: dict[str, Any] = {
    "name": "batches/123456",
    "metadata": {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": f"models/{MODEL}",
        "name": "batches/123456",
        "displayName": "my-batch-requests",
        "createTime": "2014-10-02T15:01:23.045123456Z",
        "updateTime": "2014-10-02T15:01:23.045123456Z",
        "batchStats": {
            "requestCount": "5",
            "successfulRequestCount": "2",
            "failedRequestCount": "1",
            "pendingRequestCount": "2",
        },
        "state": "BATCH_STATE_RUNNING",
    },
}

ANSWER = {
    "candidates": [
        {
            "content": {
                "parts": [{"text": "Photosynthesis turns light into sugar."}],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 7, "totalTokenCount": 15},
    "modelVersion": MODEL,
    "responseId": "resp-1",
}
SUCCEEDED_ENTRY = {"response": ANSWER, "metadata": {"key": "request-1"}}
ERROR_ENTRY = {
    "error": {"code": 3, "message": "Request contains an invalid argument."},
    "metadata": {"key": "request-2"},
}


def test_the_create_body_is_the_documented_one() -> None:
    client = GeminiBatchClient()
    entries = [json.loads(client.encode_line(target(), item(f"request-{n}"))) for n in (1, 2)]
    for entry in entries:  # the online adapter names the role the docs leave out
        assert entry["request"]["contents"][0].pop("role") == "user"
    body = {
        "batch": {
            "display_name": "my-batch-requests",
            "input_config": {"requests": {"requests": entries}},
        }
    }
    assert body == GUIDE_CREATE


def test_the_request_is_the_online_adapters_body() -> None:
    client = GeminiBatchClient()
    request = ProviderRequest(
        messages=(Message("system", "Be brief."), Message("user", "Hi")), stop=("END",)
    )
    entry = json.loads(client.encode_line(target(), BatchItem(custom_id="a", request=request)))
    assert entry["request"] == json.loads(client.adapter.build_body(target(), request))
    assert entry["metadata"] == {"key": "a"}


def test_the_documented_batch_object() -> None:
    job = job_of(decode_operation(json.dumps(OPERATION).encode()))
    assert job.id == "batches/123456" and job.job_key == "my-batch-requests"
    assert (job.state, job.provider_state) == ("in_progress", "BATCH_STATE_RUNNING")
    assert (job.requests, job.succeeded, job.errored) == (5, 2, 1)
    assert job.created_at == datetime(2014, 10, 2, 15, 1, 23, 45123, tzinfo=UTC)


@pytest.mark.parametrize(
    ("state", "neutral"),
    [
        ("BATCH_STATE_PENDING", "submitted"),
        ("BATCH_STATE_RUNNING", "in_progress"),
        ("BATCH_STATE_SUCCEEDED", "ended"),
        ("BATCH_STATE_FAILED", "failed"),
        ("BATCH_STATE_CANCELLED", "cancelled"),
        ("BATCH_STATE_EXPIRED", "expired"),
        ("JOB_STATE_PENDING", "submitted"),
        ("JOB_STATE_RUNNING", "in_progress"),
        ("JOB_STATE_SUCCEEDED", "ended"),
        ("JOB_STATE_FAILED", "failed"),
        ("JOB_STATE_CANCELLED", "cancelled"),
        ("JOB_STATE_EXPIRED", "expired"),
        ("BATCH_STATE_UNSPECIFIED", "in_progress"),
    ],
)
def test_state_mapping(state: str, neutral: str) -> None:
    doc = OPERATION | {"metadata": OPERATION["metadata"] | {"state": state}}
    job = job_of(decode_operation(json.dumps(doc).encode()))
    assert (job.state, job.provider_state) == (neutral, state)


def test_an_expired_jobs_pending_requests_count_as_errored() -> None:
    doc = OPERATION | {"metadata": OPERATION["metadata"] | {"state": "BATCH_STATE_EXPIRED"}}
    assert job_of(decode_operation(json.dumps(doc).encode())).errored == 3


def test_inline_results_and_an_error_entry() -> None:
    client = GeminiBatchClient()
    ok = client._result(target(), entry_of(SUCCEEDED_ENTRY), 0)
    assert ok.custom_id == "request-1" and ok.error is None and not ok.expired
    assert ok.result is not None
    assert ok.result.text == "Photosynthesis turns light into sugar."
    assert ok.result.finish_reason == "stop"
    assert (ok.result.input_tokens, ok.result.output_tokens) == (8, 7)

    bad = client._result(target(), entry_of(ERROR_ENTRY), 1)
    assert bad.custom_id == "request-2" and bad.result is None
    assert isinstance(bad.error, BadRequest) and bad.error.status == 400
    assert "invalid argument" in str(bad.error)

    busy = {"error": {"code": 8, "message": "Quota exceeded."}, "metadata": {"key": "k"}}
    limited = client._result(target(), entry_of(busy), 2)
    assert isinstance(limited.error, RateLimited) and limited.error.retryable

    cancelled = {"error": {"code": 1, "message": "cancelled"}, "metadata": {"key": "c"}}
    gone = client._result(target(), entry_of(cancelled), 3)
    assert (gone.custom_id, gone.expired, gone.error) == ("c", True, None)


def test_a_response_without_its_key_is_matched_by_its_place() -> None:
    """Inline responses come in the order of the requests, and their `metadata` is not always
    returned (users report it missing: discuss.ai.google.dev/t/112386): such a result has no
    `custom_id` but its position, which the lane matches to the job's requests in order."""
    client = GeminiBatchClient()
    bare = {k: v for k, v in SUCCEEDED_ENTRY.items() if k != "metadata"}
    got = client._result(target(), entry_of(bare), 4)
    assert got.custom_id == "" and got.index == 4 and got.result is not None
    keyed = client._result(target(), entry_of(SUCCEEDED_ENTRY), 0)
    assert keyed.custom_id == "request-1" and keyed.index == 0


def test_the_limits() -> None:
    assert GeminiBatchClient().limits == BatchLimits(10_000, 20_000_000)
    assert isinstance(batch_client_for("gemini"), GeminiBatchClient)
    assert "gemini" in BATCH_PROVIDERS


async def test_the_size_limit_counts_encode_lines_bytes() -> None:
    items = [item(f"job-{n}") for n in range(3)]
    size = sum(len(GeminiBatchClient().encode_line(target(), i)) for i in items)
    client = GeminiBatchClient(limits=BatchLimits(max_requests=10, max_bytes=size - 1))
    with pytest.raises(BadRequest, match=f"{size} bytes of requests"):
        await client.submit(target("http://127.0.0.1:9"), items, "job")


# -- a local server speaking the wire ---------------------------------------------------------


def _google_error(code: int, message: str, status: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


class GeminiBatches:
    """Batches as Google keeps them, in memory; the test moves a batch on."""

    PAGE = 2

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self.order: list[str] = []
        self.fail: tuple[int, dict[str, Any]] | None = None
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.fail is not None:
            status, body = self.fail
            return web.json_response(body, status=status)
        if request.headers.get("x-goog-api-key") != KEY or "key" in request.query:
            return web.json_response(
                _google_error(401, "API key not valid.", "UNAUTHENTICATED"), status=401
            )
        path, method = request.path, request.method
        if path == f"/v1beta/models/{MODEL}:batchGenerateContent" and method == "POST":
            batch = (await request.json())["batch"]
            self.clock += timedelta(seconds=10)
            name = f"batches/b{len(self.ops):04d}"
            requests = batch["input_config"]["requests"]["requests"]
            self.requests[name] = requests
            self.ops[name] = {
                "name": name,
                "metadata": {
                    "model": f"models/{MODEL}",
                    "name": name,
                    "displayName": batch["display_name"],
                    "createTime": self.clock.isoformat().replace("+00:00", "Z"),
                    "batchStats": {
                        "requestCount": str(len(requests)),
                        "pendingRequestCount": str(len(requests)),
                    },
                    "state": "BATCH_STATE_PENDING",
                },
            }
            self.order.append(name)
            return web.json_response(self.ops[name])
        if path == "/v1beta/batches" and method == "GET":
            token = request.query.get("pageToken")
            start = int(token) if token else 0
            page = self.order[start : start + self.PAGE]
            body: dict[str, Any] = {  # the list leaves out inline responses
                "operations": [
                    {k: v for k, v in self.ops[n].items() if k != "response"} for n in page
                ]
            }
            if start + self.PAGE < len(self.order):
                body["nextPageToken"] = str(start + self.PAGE)
            return web.json_response(body)
        tail = path.removeprefix("/v1beta/")
        name, _, verb = tail.partition(":")
        op = self.ops.get(name)
        if op is None:
            return web.json_response(
                _google_error(404, "Requested entity was not found.", "NOT_FOUND"), status=404
            )
        if verb == "cancel" and method == "POST":
            op["metadata"]["state"] = "BATCH_STATE_CANCELLED"
            return web.json_response({})
        return web.json_response(op)

    def end(self, name: str, *, answer: int | None = None) -> None:
        """End the batch: the first `answer` requests echoed (all by default), the rest left
        without a result; a request saying "bad" errored."""
        entries = []
        ok = failed = 0
        for n, req in enumerate(self.requests[name]):
            if answer is not None and n >= answer:
                continue
            text = req["request"]["contents"][-1]["parts"][0]["text"]
            if text == "bad":
                entries.append(ERROR_ENTRY | {"metadata": req["metadata"]})
                failed += 1
                continue
            parts = [{"text": f"echo: {text}"}]
            reply = ANSWER | {
                "candidates": [ANSWER["candidates"][0] | {"content": {"parts": parts}}]
            }
            entries.append({"response": reply, "metadata": req["metadata"]})
            ok += 1
        op = self.ops[name]
        if op["metadata"]["state"] != "BATCH_STATE_CANCELLED":
            op["metadata"]["state"] = "BATCH_STATE_SUCCEEDED"
        op["metadata"]["batchStats"] = {
            "requestCount": str(len(self.requests[name])),
            "successfulRequestCount": str(ok),
            "failedRequestCount": str(failed),
            "pendingRequestCount": str(len(self.requests[name]) - ok - failed),
        }
        op["done"] = True
        op["response"] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
            "GenerateContentBatchOutput",
            "inlinedResponses": {"inlinedResponses": list(reversed(entries))},
        }


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[GeminiBatches]:
    fake = GeminiBatches()
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
async def server() -> AsyncIterator[GeminiBatches]:
    async with serve() as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[GeminiBatchClient]:
    c = GeminiBatchClient()
    yield c
    await c.close()


@pytest.mark.parametrize("suffix", ["", "/", "/v1beta", "/v1"])
async def test_submit_get_results_round_trip(
    server: GeminiBatches, client: GeminiBatchClient, suffix: str
) -> None:
    t = target(server.base + suffix)
    items = [item("job7-0", "a"), item("job7-1", "b"), item("job7-2", "bad")]
    job = await client.submit(t, items, "job7")
    assert (job.state, job.requests, job.job_key) == ("submitted", 3, "job7")
    assert job.id.startswith("batches/")
    assert [r["metadata"]["key"] for r in server.requests[job.id]] == ["job7-0", "job7-1", "job7-2"]

    assert (await client.get(t, job.id)).state == "submitted"
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
    assert isinstance(results["job7-2"].error, BadRequest)


async def test_cancel_then_the_partial_results(
    server: GeminiBatches, client: GeminiBatchClient
) -> None:
    t = target(server.base)
    job = await client.submit(t, [item(f"k-{n}", str(n)) for n in range(3)], "k")
    cancelled = await client.cancel(t, job.id)
    assert (cancelled.id, cancelled.state, cancelled.provider_state) == (
        job.id,
        "cancelled",
        "BATCH_STATE_CANCELLED",
    )
    server.end(job.id, answer=1)
    results = {r.custom_id: r for r in await client.results(t, job.id)}
    assert set(results) == {"k-0"}  # the others have no entry: the lane answers them expired
    assert results["k-0"].result is not None


async def test_find_by_display_name(server: GeminiBatches, client: GeminiBatchClient) -> None:
    t = target(server.base)
    since = datetime(2025, 1, 1, tzinfo=UTC)
    for key in ("b", "c", "d", "a", "e"):  # "a" is on the second page
        await client.submit(t, [item(f"{key}-0")], key)
    found = await client.find(t, "a", since)
    assert found is not None and found.id == server.order[3] and found.job_key == "a"
    assert await client.find(t, "zzz", since) is None
    created = server.ops[server.order[3]]["metadata"]["createTime"]
    later = datetime.fromisoformat(created) + timedelta(seconds=1)
    assert await client.find(t, "a", later) is None  # created before `since`


async def test_a_401_is_an_auth_error_without_the_key(
    server: GeminiBatches, client: GeminiBatchClient
) -> None:
    server.fail = (401, _google_error(401, f"API key {KEY} not valid.", "UNAUTHENTICATED"))
    with pytest.raises(AuthError) as caught:
        await client.get(target(server.base), "batches/b0000")
    assert caught.value.status == 401 and "not valid" in str(caught.value)
    assert KEY not in str(caught.value) and KEY[:12] not in str(caught.value)
    assert KEY not in repr(caught.value)


async def test_a_500_is_a_server_error(server: GeminiBatches, client: GeminiBatchClient) -> None:
    server.fail = (500, _google_error(500, "oops", "INTERNAL"))
    with pytest.raises(ServerError, match="oops") as caught:
        await client.submit(target(server.base), [item("x-0")], "x")
    assert caught.value.retryable and caught.value.status == 500


async def test_an_unknown_batch_is_not_found(
    server: GeminiBatches, client: GeminiBatchClient
) -> None:
    with pytest.raises(NotFound):
        await client.get(target(server.base), "batches/nope")


async def test_a_batch_id_that_is_not_a_name_is_refused(client: GeminiBatchClient) -> None:
    with pytest.raises(BadRequest, match="not a batch name"):
        await client.get(target("http://127.0.0.1:9"), "batches/../files")


async def test_a_refused_connection_is_connection_failed(client: GeminiBatchClient) -> None:
    with pytest.raises(ConnectionFailed) as caught:
        await client.get(target("http://127.0.0.1:9"), "batches/b0")
    assert KEY not in str(caught.value)
