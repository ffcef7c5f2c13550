"""The fake provider's batch APIs (`devkit/fake_batch.py`) over raw HTTP, shaped like the
providers' documented examples: OpenAI's Batch API and Anthropic's Message Batches.

Most tests drive the batch clock by hand (`batch_clock`), so the states between submit and end
are seen exactly; the documented flows run on the real, accelerated clock."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from llm_worker.devkit.fake_server import build_app

Client = TestClient[Any, Any]
FAST = 0.05  # batch_seconds on the real clock


class Clock:
    """The batch clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.start = self.now

    def __call__(self) -> float:
        return self.now

    def at(self, seconds: float) -> None:
        """`seconds` after the clock's start."""
        self.now = self.start + seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _client(**settings: Any) -> Client:
    client: Client = TestClient(TestServer(build_app(**settings)))
    await client.start_server()
    return client


@pytest.fixture
async def fast() -> AsyncIterator[Client]:
    client = await _client(batch_seconds=FAST)
    yield client
    await client.close()


@pytest.fixture
async def manual(clock: Clock) -> AsyncIterator[Client]:
    """A server whose batches run 1 s of the hand-driven clock."""
    client = await _client(batch_seconds=1.0, batch_clock=clock)
    yield client
    await client.close()


def chat(text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text},
        ],
        "max_tokens": 1000,
    }


def line(custom_id: str, body: Any, **changes: Any) -> dict[str, Any]:
    """One input line as the Batch guide shows it."""
    doc = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return {**doc, **changes}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(msgspec.json.encode(doc) + b"\n" for doc in lines)


def read_jsonl(data: bytes) -> list[Any]:
    return [msgspec.json.decode(raw) for raw in data.splitlines() if raw.strip()]


async def ok(response: Awaitable[aiohttp.ClientResponse], status: int = 200) -> Any:
    async with await response as r:
        assert r.status == status, await r.text()
        return await r.json()


async def upload(client: Client, lines: list[Any], prefix: str = "", purpose: str = "batch") -> Any:
    """`POST /v1/files` as the Files API reference shows it (multipart `purpose`, `file`):
    https://platform.openai.com/docs/api-reference/files/create"""
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", jsonl(lines), filename="batchinput.jsonl")
    return await ok(client.post(f"{prefix}/v1/files", data=form))


async def submit(client: Client, lines: list[Any], prefix: str = "", **extra: Any) -> Any:
    """Upload, then `POST /v1/batches` as in the Batch guide:
    https://platform.openai.com/docs/guides/batch"""
    file = await upload(client, lines, prefix)
    body = {
        "input_file_id": file["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **extra,
    }
    return await ok(client.post(f"{prefix}/v1/batches", json=body))


async def content(client: Client, file_id: str | None) -> list[Any]:
    assert file_id is not None
    async with client.get(f"/v1/files/{file_id}/content") as r:
        assert r.status == 200
        return read_jsonl(await r.read())


async def poll(client: Client, path: str, done: Callable[[Any], bool], within: float = 5.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        doc = await ok(client.get(path))
        if done(doc):
            return doc
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.01)


# -- OpenAI ------------------------------------------------------------------------------------


async def test_openai_documented_flow_ends_within_the_accelerated_clock(fast: Client) -> None:
    # The flow of https://platform.openai.com/docs/guides/batch: upload a .jsonl with purpose
    # "batch", create the batch, poll it, download the output file.
    lines = [line("request-1", chat("Hello world!")), line("request-2", chat("Hi again"))]
    file = await upload(fast, lines)
    assert re.fullmatch(r"file-\w+", file["id"])
    assert file["object"] == "file" and file["purpose"] == "batch"
    assert file["bytes"] == len(jsonl(lines)) and file["filename"] == "batchinput.jsonl"
    assert await content(fast, file["id"]) == lines

    started = time.monotonic()
    body = {
        "input_file_id": file["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"description": "nightly eval job"},
    }
    batch = await ok(fast.post("/v1/batches", json=body))
    assert re.fullmatch(r"batch_\w+", batch["id"])
    assert batch["object"] == "batch" and batch["status"] == "validating"
    assert batch["input_file_id"] == file["id"] and batch["completion_window"] == "24h"
    assert batch["metadata"] == {"description": "nightly eval job"}
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    assert batch["expires_at"] == batch["created_at"] + 24 * 3600

    done = await poll(fast, f"/v1/batches/{batch['id']}", lambda b: b["status"] == "completed")
    assert time.monotonic() - started < 2.0  # not 24 h
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert done["completed_at"] is not None and done["in_progress_at"] is not None
    assert done["error_file_id"] is None
    output = await content(fast, done["output_file_id"])
    assert [o["custom_id"] for o in output] == ["request-1", "request-2"]
    for out, sent in zip(output, lines, strict=True):
        assert re.fullmatch(r"batch_req_\w+", out["id"])
        assert out["error"] is None
        assert out["response"]["status_code"] == 200 and out["response"]["request_id"]
        online = await ok(fast.post("/v1/chat/completions", json=sent["body"]))
        answer = out["response"]["body"]
        assert answer["object"] == "chat.completion"
        assert (answer["choices"], answer["usage"]) == (online["choices"], online["usage"])


async def test_openai_batch_moves_through_its_states_on_the_clock(
    manual: Client, clock: Clock
) -> None:
    lines = [line(f"r{i}", chat(f"question {i}")) for i in range(3)]
    batch = await submit(manual, lines)
    path = f"/v1/batches/{batch['id']}"
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    clock.at(0.2)
    assert (await ok(manual.get(path)))["status"] == "validating"
    clock.at(0.4)  # validated; the three are answered at 5/9, 7/9 and 9/9 of a second
    running = await ok(manual.get(path))
    assert running["status"] == "in_progress" and running["in_progress_at"] is not None
    assert running["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    clock.at(0.6)
    assert (await ok(manual.get(path)))["request_counts"]["completed"] == 1
    clock.at(1.0)
    done = await ok(manual.get(path))
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}


async def test_openai_error_and_expire_markers(manual: Client, clock: Clock) -> None:
    lines = [
        line("fine", chat("plain question")),
        line("broken", chat("this one fails [batch:error]")),
        line("late", chat("this one never runs [batch:expire]")),
    ]
    batch = await submit(manual, lines)
    clock.at(1.0)
    done = await ok(manual.get(f"/v1/batches/{batch['id']}"))
    assert done["status"] == "expired" and done["expired_at"] is not None
    assert done["completed_at"] is None
    assert done["request_counts"] == {"total": 3, "completed": 1, "failed": 1}
    output = await content(manual, done["output_file_id"])
    assert [o["custom_id"] for o in output] == ["fine"]
    errors = {e["custom_id"]: e for e in await content(manual, done["error_file_id"])}
    failed = errors["broken"]
    assert failed["error"] is None and failed["response"]["status_code"] == 500
    assert failed["response"]["body"]["error"]["type"] == "server_error"
    expired = errors["late"]
    assert expired["response"] is None and expired["error"]["code"] == "batch_expired"


async def test_openai_request_the_chat_route_refuses_is_a_400_line(
    manual: Client, clock: Clock
) -> None:
    batch = await submit(manual, [line("no-messages", {"model": "gpt-4o-mini"})])
    clock.at(1.0)
    done = await ok(manual.get(f"/v1/batches/{batch['id']}"))
    assert done["status"] == "completed" and done["output_file_id"] is None
    [error] = await content(manual, done["error_file_id"])
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["type"] == "invalid_request_error"


async def test_openai_cancel_keeps_the_answers_given_before_it(
    manual: Client, clock: Clock
) -> None:
    lines = [line(f"r{i}", chat(f"question {i}")) for i in range(3)]
    batch = await submit(manual, lines)
    path = f"/v1/batches/{batch['id']}"
    clock.at(0.6)  # r0 answered
    cancelling = await ok(manual.post(f"{path}/cancel"))
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"] is not None
    clock.at(0.8)
    assert (await ok(manual.get(path)))["status"] == "cancelling"
    again = await ok(manual.post(f"{path}/cancel"))  # a second cancel changes nothing
    assert again["cancelling_at"] == cancelling["cancelling_at"]
    clock.at(1.0)
    done = await ok(manual.get(path))
    assert done["status"] == "cancelled" and done["cancelled_at"] is not None
    assert done["request_counts"] == {"total": 3, "completed": 1, "failed": 0}
    assert [o["custom_id"] for o in await content(manual, done["output_file_id"])] == ["r0"]
    errors = await content(manual, done["error_file_id"])
    assert {e["custom_id"]: e["error"]["code"] for e in errors} == {
        "r1": "batch_cancelled",
        "r2": "batch_cancelled",
    }
    async with manual.post(f"{path}/cancel") as r:
        assert r.status == 400  # a batch that ended cannot be cancelled
        assert (await r.json())["error"]["type"] == "invalid_request_error"


async def test_openai_cancel_while_validating_cancels_every_request(
    manual: Client, clock: Clock
) -> None:
    batch = await submit(manual, [line("only", chat("x"))])
    await ok(manual.post(f"/v1/batches/{batch['id']}/cancel"))
    clock.at(1.0)
    done = await ok(manual.get(f"/v1/batches/{batch['id']}"))
    assert done["status"] == "cancelled" and done["in_progress_at"] is None
    assert done["output_file_id"] is None
    [error] = await content(manual, done["error_file_id"])
    assert error["error"]["code"] == "batch_cancelled"


async def test_openai_unknown_file_is_a_404(manual: Client) -> None:
    body = {
        "input_file_id": "file-nope",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    async with manual.post("/v1/batches", json=body) as r:
        assert r.status == 404
        error = (await r.json())["error"]
        assert "file-nope" in error["message"] and error["type"] == "invalid_request_error"
    async with manual.get("/v1/files/file-nope/content") as r:
        assert r.status == 404
    async with manual.get("/v1/batches/batch_nope") as r:
        assert r.status == 404


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {"k": 1}}, "metadata"),
    ],
)
async def test_openai_refuses_a_bad_batch_at_once(
    manual: Client, change: dict[str, Any], param: str
) -> None:
    file = await upload(manual, [line("a", chat("x"))])
    body = {
        "input_file_id": file["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **change,
    }
    async with manual.post("/v1/batches", json=body) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == param


async def test_openai_a_file_not_for_batches_is_refused(manual: Client) -> None:
    file = await upload(manual, [line("a", chat("x"))], purpose="fine-tune")
    body = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions"}
    async with manual.post("/v1/batches", json={**body, "completion_window": "24h"}) as r:
        assert r.status == 400


async def test_openai_a_bad_input_file_fails_the_batch_after_validating(
    manual: Client, clock: Clock
) -> None:
    lines = [
        line("a", chat("x")),
        line("b", chat("x"), url="/v1/embeddings"),
        line("c", chat("x"), method="GET"),
        line("a", chat("again")),
        "not an object",
    ]
    batch = await submit(manual, lines)
    assert batch["status"] == "validating"
    clock.at(0.4)
    failed = await ok(manual.get(f"/v1/batches/{batch['id']}"))
    assert failed["status"] == "failed" and failed["failed_at"] is not None
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert failed["output_file_id"] is None and failed["error_file_id"] is None
    problems = {(e["line"], e["code"]) for e in failed["errors"]["data"]}
    assert problems == {
        (2, "invalid_url"),
        (3, "invalid_method"),
        (4, "duplicate_custom_id"),
        (5, "invalid_json_line"),
    }


async def test_openai_list_is_newest_first_and_pages(manual: Client) -> None:
    ids = [(await submit(manual, [line("a", chat(str(i)))]))["id"] for i in range(3)]
    first = await ok(manual.get("/v1/batches", params={"limit": "2"}))
    assert first["object"] == "list"
    assert [b["id"] for b in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True and first["last_id"] == ids[1]
    second = await ok(manual.get("/v1/batches", params={"limit": "2", "after": ids[1]}))
    assert [b["id"] for b in second["data"]] == [ids[0]] and second["has_more"] is False
    everything = await ok(manual.get("/v1/batches"))
    assert [b["id"] for b in everything["data"]] == ids[::-1]
    async with manual.get("/v1/batches", params={"limit": "0"}) as r:
        assert r.status == 400


# -- Anthropic ---------------------------------------------------------------------------------


def message_request(custom_id: str, text: str) -> dict[str, Any]:
    """One request as https://docs.anthropic.com/en/api/creating-message-batches shows it."""
    params = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
    }
    return {"custom_id": custom_id, "params": params}


async def create(client: Client, requests: list[Any], prefix: str = "") -> Any:
    path = f"{prefix}/anthropic/v1/messages/batches"
    return await ok(client.post(path, json={"requests": requests}))


async def results(client: Client, results_url: str) -> list[Any]:
    url = URL(results_url)
    assert url.origin() == client.make_url("/").origin()  # it points at this server
    async with client.get(url.path) as r:
        assert r.status == 200
        return read_jsonl(await r.read())


async def test_anthropic_documented_flow_ends_within_the_accelerated_clock(
    fast: Client,
) -> None:
    # The flow of https://docs.anthropic.com/en/docs/build-with-claude/batch-processing:
    # create, poll until processing_status is "ended", stream the results from results_url.
    requests = [
        message_request("my-first-request", "Hello, world"),
        message_request("my-second-request", "Hi again, friend"),
    ]
    started = time.monotonic()
    batch = await create(fast, requests)
    assert re.fullmatch(r"msgbatch_\w+", batch["id"])
    assert batch["type"] == "message_batch" and batch["processing_status"] == "in_progress"
    assert batch["request_counts"] == {
        "processing": 2,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["ended_at"] is None and batch["results_url"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", batch["created_at"])
    assert batch["expires_at"] > batch["created_at"]

    path = f"/anthropic/v1/messages/batches/{batch['id']}"
    done = await poll(fast, path, lambda b: b["processing_status"] == "ended")
    assert time.monotonic() - started < 2.0  # not 24 h
    assert done["request_counts"]["succeeded"] == 2 and done["ended_at"] is not None
    assert done["results_url"].endswith(f"{path}/results")
    lines = await results(fast, done["results_url"])
    assert [x["custom_id"] for x in lines] == ["my-first-request", "my-second-request"]
    for result, sent in zip(lines, requests, strict=True):
        assert result["result"]["type"] == "succeeded"
        message = result["result"]["message"]
        online = await ok(fast.post("/anthropic/v1/messages", json=sent["params"]))
        assert message["type"] == "message"
        assert (message["content"], message["usage"]) == (online["content"], online["usage"])


async def test_anthropic_error_and_expire_markers(manual: Client, clock: Clock) -> None:
    requests = [
        message_request("fine", "plain question"),
        message_request("broken", "this one fails [batch:error]"),
        message_request("late", "this one never runs [batch:expire]"),
        {"custom_id": "bad-params", "params": {"model": "claude-sonnet-4-5"}},
    ]
    batch = await create(manual, requests)
    path = f"/anthropic/v1/messages/batches/{batch['id']}"
    clock.at(0.5)  # two of four answered
    running = await ok(manual.get(path))
    assert running["request_counts"]["processing"] == 2
    async with manual.get(f"{path}/results") as r:
        assert r.status == 400  # no results before the batch ends
    clock.at(1.0)
    done = await ok(manual.get(path))
    assert done["processing_status"] == "ended"
    assert done["request_counts"] == {
        "processing": 0,
        "succeeded": 1,
        "errored": 2,
        "canceled": 0,
        "expired": 1,
    }
    by_id = {x["custom_id"]: x["result"] for x in await results(manual, done["results_url"])}
    assert by_id["fine"]["type"] == "succeeded"
    assert by_id["broken"] == {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": "api_error", "message": "fake provider: injected batch error"},
        },
    }
    assert by_id["bad-params"]["error"]["error"]["type"] == "invalid_request_error"
    assert by_id["late"] == {"type": "expired"}


async def test_anthropic_cancel_keeps_the_answers_given_before_it(
    manual: Client, clock: Clock
) -> None:
    batch = await create(manual, [message_request(f"r{i}", f"q {i}") for i in range(4)])
    path = f"/anthropic/v1/messages/batches/{batch['id']}"
    clock.at(0.3)  # r0 answered (at 1/4)
    canceling = await ok(manual.post(f"{path}/cancel"))
    assert canceling["processing_status"] == "canceling"
    assert canceling["cancel_initiated_at"] is not None
    clock.at(0.7)
    done = await ok(manual.get(path))
    assert done["processing_status"] == "ended"
    assert done["request_counts"] == {
        "processing": 0,
        "succeeded": 1,
        "errored": 0,
        "canceled": 3,
        "expired": 0,
    }
    by_id = {
        x["custom_id"]: x["result"]["type"] for x in await results(manual, done["results_url"])
    }
    assert by_id == {"r0": "succeeded", "r1": "canceled", "r2": "canceled", "r3": "canceled"}
    async with manual.post(f"{path}/cancel") as r:
        assert r.status == 400
        assert (await r.json())["type"] == "error"


async def test_anthropic_list_pages_both_ways(manual: Client) -> None:
    ids = [(await create(manual, [message_request("a", str(i))]))["id"] for i in range(3)]
    path = "/anthropic/v1/messages/batches"
    first = await ok(manual.get(path, params={"limit": "2"}))
    assert [b["id"] for b in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (ids[2], ids[1])
    nxt = await ok(manual.get(path, params={"limit": "2", "after_id": first["last_id"]}))
    assert [b["id"] for b in nxt["data"]] == [ids[0]] and nxt["has_more"] is False
    back = await ok(manual.get(path, params={"limit": "1", "before_id": ids[0]}))
    assert [b["id"] for b in back["data"]] == [ids[1]] and back["has_more"] is True
    async with manual.get(path, params={"limit": "1001"}) as r:
        assert r.status == 400


@pytest.mark.parametrize(
    "requests",
    [
        [],
        [message_request("same", "x"), message_request("same", "y")],
        [message_request("has space", "x")],
        [{"custom_id": "no-params"}],
    ],
)
async def test_anthropic_refuses_a_bad_batch(manual: Client, requests: list[Any]) -> None:
    async with manual.post("/anthropic/v1/messages/batches", json={"requests": requests}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    assert (await ok(manual.get("/admin/batches")))["batches"] == []


async def test_anthropic_unknown_batch_is_a_404(manual: Client) -> None:
    for path in ("msgbatch_nope", "msgbatch_nope/results"):
        async with manual.get(f"/anthropic/v1/messages/batches/{path}") as r:
            assert r.status == 404
            assert (await r.json())["error"]["type"] == "not_found_error"


# -- both --------------------------------------------------------------------------------------


async def test_admin_batches_shows_every_batch_and_reset_forgets_them(manual: Client) -> None:
    metadata = {"job_key": "lane-7"}
    openai = await submit(manual, [line("a", chat("x")), line("b", chat("y"))], metadata=metadata)
    anthropic = await create(manual, [message_request("c", "z")])
    seen = (await ok(manual.get("/admin/batches")))["batches"]
    assert [(b["provider"], b["id"]) for b in seen] == [
        ("openai", openai["id"]),
        ("anthropic", anthropic["id"]),
    ]
    assert seen[0]["metadata"] == metadata and seen[0]["custom_ids"] == ["a", "b"]
    assert (seen[0]["requests"], seen[1]["requests"]) == (2, 1)
    assert seen[1]["custom_ids"] == ["c"] and seen[1]["metadata"] is None
    assert all(isinstance(b["created_at"], float) for b in seen)
    await ok(manual.post("/admin/reset"))
    assert (await ok(manual.get("/admin/batches")))["batches"] == []
    async with manual.get(f"/v1/batches/{openai['id']}") as r:
        assert r.status == 404


async def test_batches_belong_to_their_profile(manual: Client, clock: Clock) -> None:
    openai = await submit(manual, [line("a", chat("x"))], prefix="/slow")
    anthropic = await create(manual, [message_request("b", "y")], prefix="/slow")
    async with manual.get(f"/v1/batches/{openai['id']}") as r:
        assert r.status == 404  # not on the default profile
    assert (await ok(manual.get("/v1/batches")))["data"] == []
    clock.at(1.0)
    path = f"/slow/anthropic/v1/messages/batches/{anthropic['id']}"
    done = await ok(manual.get(path))
    assert URL(done["results_url"]).path == f"{path}/results"
    assert [x["custom_id"] for x in await results(manual, done["results_url"])] == ["b"]
    listed = await ok(manual.get("/slow/v1/batches"))
    assert [b["status"] for b in listed["data"]] == ["completed"]
