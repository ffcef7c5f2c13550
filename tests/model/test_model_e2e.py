"""The whole worker against a real model: registry row → Kafka prompt → llama.cpp → completion.

The row names provider `openai_compatible`, dialect `llama_cpp`; the broker and PostgreSQL are
the integration layer's (tests/integration/conftest.py). The server answers one request at a
time, so the worker takes two prompts at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest

from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh

from .conftest import ModelServer
from .test_model_adapter import LABELS, SENTIMENT, WEATHER

pytestmark = [pytest.mark.model, pytest.mark.integration]

MODEL_ID = "smollm2"
REVIEWS = [
    "The soup was cold and the waiter was rude.",
    "Best concert I have been to in years!",
    "The parcel arrived on Tuesday.",
    "I loved every minute of this film.",
    "The battery died after one hour. Useless.",
    "The meeting is at 3 pm in room B.",
    "Fantastic service, friendly staff, will come back.",
    "My order was wrong twice and nobody apologised.",
    "The train leaves from platform 4.",
    "This keyboard is a joy to type on.",
    "The app crashes every time I open it.",
    "The museum opens at nine.",
    "What a beautiful sunny morning!",
    "The hotel room smelled of smoke.",
    "The report has twelve pages.",
    "Our new puppy makes us so happy.",
    "The update deleted all my photos.",
    "The shop sells bread and milk.",
    "The view from the top was breathtaking.",
    "The headphones broke on the first day.",
]


def _row(server: ModelServer) -> ModelRow:
    return ModelRow(
        model_id=MODEL_ID,
        provider="openai_compatible",
        endpoint=server.endpoint,
        upstream_model=server.model,
        dialect="llama_cpp",
        max_tokens=64,
        timeout_ms=120_000,
    )


def _settings(make_settings: Callable[..., Settings]) -> Settings:
    """Two prompts at a time (the server answers one at a time: ~0.5 s each here). A request
    that fails ends within its deadline, as an error completion, well before the read below
    stops waiting (and before pytest's 300 s timeout), so a failure names its cause."""
    return make_settings(
        max_in_flight=2, request_deadline_s=60.0, capacity_wait_s=30.0, max_attempts=2
    )


def _messages(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]


async def _run(s: Settings, prompts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
    async with App(s, http=False).running():
        records = await asyncio.to_thread(kh.consume, bs, s.completions_topic, len(prompts), 200)
    return {r.json()["id"]: r.json() for r in records}


async def test_classifications_come_back_valid_for_the_schema(
    model_server: ModelServer, make_settings: Callable[..., Settings], pg_dsn: str
) -> None:
    s = _settings(make_settings)
    upsert_row(pg_dsn, _row(model_server))
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "sentiment", "schema": SENTIMENT, "strict": True},
    }
    prompts = [
        {
            "id": f"cls-{i}",
            "model": MODEL_ID,
            "messages": _messages(
                f"Classify the sentiment of this text as positive, negative or neutral: {text!r}"
            ),
            "response_format": fmt,
            "temperature": 0,
            "metadata": {"i": i},
        }
        for i, text in enumerate(REVIEWS)
    ]

    comps = await _run(s, prompts)

    for rid, doc in comps.items():  # what came back first: a failure names its cause
        assert doc["status"] == "ok", doc
        assert doc["provider"] == "openai_compatible", doc
        assert doc["upstream_model"] == model_server.model, doc
        jsonschema_rs.validate(SENTIMENT, doc["json"])
        assert doc["json"]["sentiment"] in LABELS, rid
        assert doc["usage"]["input_tokens"] > 0 and doc["usage"]["output_tokens"] > 0
        assert doc["metadata"] == {"i": int(rid.removeprefix("cls-"))}
    assert sorted(comps) == sorted(p["id"] for p in prompts)


async def test_forced_tool_call_comes_back_as_an_object(
    model_server: ModelServer, make_settings: Callable[..., Settings], pg_dsn: str
) -> None:
    s = _settings(make_settings)
    upsert_row(pg_dsn, _row(model_server))
    tool = {
        "type": "function",
        "function": {
            "name": WEATHER.name,
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }
    prompt = {
        "id": "tool-1",
        "model": MODEL_ID,
        "messages": _messages("What is the weather like in Paris right now?"),
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": WEATHER.name}},
        "temperature": 0,
    }

    comps = await _run(s, [prompt])

    doc = comps["tool-1"]
    assert doc["status"] == "ok", doc
    calls = doc["tool_calls"]
    assert isinstance(calls, list) and len(calls) == 1, doc
    call = calls[0]
    assert set(call) == {"id", "name", "arguments"}, call
    assert call["id"] and call["name"] == WEATHER.name
    assert isinstance(call["arguments"], dict)
    jsonschema_rs.validate(WEATHER.parameters, call["arguments"])
