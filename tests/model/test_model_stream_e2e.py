"""Streaming through the whole worker against a real model: a prompt with `"stream": true` →
llama.cpp's token-by-token answer → chunk records on the chunks topic, then the completion.

The broker, PostgreSQL and the registry row are `test_model_e2e`'s (provider
`openai_compatible`, dialect `llama_cpp`). What a chunk sequence must be (worker/chunks.py):
`seq` 0..n without a gap or a repeat, the deltas joined are the completion's text (and the
tool-call pieces joined its arguments), the last chunk alone carries `finish_reason` and
`usage`. llama-cpp-python sends no usage in a stream (test_model_stream.py), so a streamed
completion from it counts 0 tokens: recorded below as what is seen, not as what is wanted.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh

from .conftest import ModelServer
from .test_model_adapter import WEATHER
from .test_model_e2e import MODEL_ID, _messages, _row

pytestmark = [pytest.mark.model, pytest.mark.integration]


def _settings(make_settings: Callable[..., Settings], names: dict[str, str]) -> Settings:
    """As test_model_e2e's, with a chunks topic of this test's own, and one call at a time:
    llama-cpp-python's server cuts a stream short when another request arrives
    (`interrupt_requests`, test_model_stream.py)."""
    return make_settings(
        max_in_flight=1,
        request_deadline_s=60.0,
        capacity_wait_s=30.0,
        max_attempts=2,
        chunks_topic=names["completions_topic"] + ".chunks",
    )


async def _run(
    s: Settings, prompts: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The completions by id, and each id's chunk records in the order read."""
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
    async with App(s, http=False).running():
        records = await asyncio.to_thread(kh.consume, bs, s.completions_topic, len(prompts), 200)
    # Read after the worker stopped: everything it acknowledged before its completions.
    chunks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in await asyncio.to_thread(kh.read_all, bs, s.chunks_topic):
        doc = r.json()
        assert r.key == doc["id"].encode(), doc  # keyed like the completion: one partition
        chunks[doc["id"]].append(doc)
    return {r.json()["id"]: r.json() for r in records}, chunks


def _check_sequence(chunks: list[dict[str, Any]], finish_reason: str) -> None:
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), chunks  # gap-free, in order
    *head, last = chunks
    assert last["finish_reason"] == finish_reason, last
    assert "usage" in last, last
    assert all("finish_reason" not in c and "usage" not in c for c in head), head


async def test_a_streamed_prompt_gives_its_answer_in_chunks(
    model_server: ModelServer,
    make_settings: Callable[..., Settings],
    names: dict[str, str],
    pg_dsn: str,
) -> None:
    s = _settings(make_settings, names)
    upsert_row(pg_dsn, _row(model_server))
    tool = {
        "type": "function",
        "function": {
            "name": WEATHER.name,
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }
    prompts = [
        {
            "id": "stream-text",
            "model": MODEL_ID,
            "messages": _messages("Write two sentences about the sea."),
            "temperature": 0,
            "stream": True,
        },
        {
            "id": "stream-tool",
            "model": MODEL_ID,
            "messages": _messages("What is the weather like in Paris right now?"),
            "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": WEATHER.name}},
            "temperature": 0,
            "stream": True,
        },
    ]

    comps, chunks = await _run(s, prompts)

    assert sorted(comps) == ["stream-text", "stream-tool"], comps
    assert sorted(chunks) == ["stream-text", "stream-tool"], chunks

    doc, seq = comps["stream-text"], chunks["stream-text"]
    assert doc["status"] == "ok", doc
    assert doc["text"].strip() and doc["finish_reason"] in ("stop", "length"), doc
    assert len(seq) > 2, seq  # pieces as they came, not the answer in one record
    _check_sequence(seq, doc["finish_reason"])
    assert "".join(c["delta"] for c in seq) == doc["text"]
    assert not any("tool_calls_delta" in c for c in seq), seq
    tokens = {k: v for k, v in doc["usage"].items() if k != "cost_usd"}  # chunks carry no cost
    assert {k: v for k, v in seq[-1]["usage"].items() if k != "cost_usd"} == tokens, seq[-1]
    assert (doc["usage"]["input_tokens"], doc["usage"]["output_tokens"]) == (0, 0), doc

    doc, seq = comps["stream-tool"], chunks["stream-tool"]
    assert doc["status"] == "ok", doc
    assert doc["finish_reason"] == "tool_calls", doc
    assert len(seq) > 2, seq
    _check_sequence(seq, "tool_calls")
    assert "".join(c["delta"] for c in seq) == ""
    pieces = [p for c in seq for p in c.get("tool_calls_delta") or ()]
    assert {p["index"] for p in pieces} == {0}, pieces
    (call,) = doc["tool_calls"]
    assert pieces[0]["id"] == call["id"] and pieces[0]["name"] == call["name"] == WEATHER.name
    assert json.loads("".join(p.get("arguments", "") for p in pieces)) == call["arguments"]
