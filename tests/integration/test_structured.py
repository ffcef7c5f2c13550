"""Structured work through the real broker and Postgres, against the fake provider speaking each
provider's wire format: a two-turn tool round trip on OpenAI-, Anthropic- and Gemini-shaped
rows, a JSON-schema answer, `invalid_output` after one more answer, and `unsupported_feature`
decided before any call (or a fallback that can honour the field answering instead)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration.test_features import Completions, _send, _topics

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
LABEL = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}, "score": {"type": "number", "minimum": 0}},
    "required": ["label", "score"],
    "additionalProperties": False,
}


def _endpoint(fake: FakeServer, provider: str, profile: str) -> str:
    """The row's endpoint for `provider` on the fake's `profile` (each adapter adds its path)."""
    if provider == "anthropic":
        return f"{fake.url}/{profile}/anthropic"  # + /v1/messages
    if provider == "gemini":
        return f"{fake.url}/{profile}/gemini"  # + /v1beta/models/{model}:generateContent
    return fake.endpoint(profile)  # + /chat/completions


def _row(model_id: str, provider: str, endpoint: str, **kw: Any) -> ModelRow:
    return ModelRow(
        model_id=model_id,
        provider=provider,
        endpoint=endpoint,
        upstream_model=f"up-{model_id}",
        max_tokens=256,
        timeout_ms=5000,
        **kw,
    )


def _tools_sent(provider: str, body: dict[str, Any]) -> list[str]:
    """The tool names a request carried, read in the provider's own shape."""
    if provider == "anthropic":
        return [t["name"] for t in body["tools"]]
    if provider == "gemini":
        return [d["name"] for t in body["tools"] for d in t["functionDeclarations"]]
    return [t["function"]["name"] for t in body["tools"]]


@pytest.mark.parametrize("provider", ["fake", "anthropic", "gemini"])
async def test_a_tool_round_trip_of_two_turns(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer, provider: str
) -> None:
    s = make_settings()
    profile = f"tools-{provider}"
    upsert_row(pg_dsn, _row("m", provider, _endpoint(fake, provider, profile)))
    await _topics(s)
    question = {"role": "user", "content": "What is the weather in Oslo?"}
    async with App(s, http=False).running(), Completions(s) as comps:
        await _send(
            s,
            [
                {
                    "id": "turn-1",
                    "model": "m",
                    "messages": [question],
                    "tools": [WEATHER],
                    "tool_choice": "required",
                }
            ],
        )
        first = (await comps.wait(["turn-1"]))["turn-1"]
        assert first["status"] == "ok", first
        assert first["finish_reason"] == "tool_calls"
        (call,) = first["tool_calls"]
        assert call["name"] == "weather" and isinstance(call["arguments"], dict)
        assert set(call["arguments"]) >= {"city", "unit"} and call["arguments"]["unit"] == "C"
        history = [
            question,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": "weather", "arguments": call["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
        ]
        await _send(s, [{"id": "turn-2", "model": "m", "messages": history, "tools": [WEATHER]}])
        second = (await comps.wait(["turn-2"]))["turn-2"]
    assert second["status"] == "ok", second
    assert "sunny, 21 C" in second["text"] and not second["tool_calls"]
    first_body, second_body = (c.body for c in fake.calls(profile))
    assert _tools_sent(provider, first_body) == ["weather"]  # in the provider's own shape
    assert "sunny, 21 C" in str(second_body)  # the tool result went back as history


async def test_a_json_schema_answer_is_ok_only_valid_and_comes_parsed(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    upsert_row(pg_dsn, _row("m", "fake", fake.endpoint("json")))
    await _topics(s)
    fmt = {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL}}
    prompts = [
        {"id": f"j{i}", "model": "m", "prompt": f"classify {i}", "response_format": fmt}
        for i in range(5)
    ]
    async with App(s, http=False).running(), Completions(s) as comps:
        await _send(s, prompts)
        out = await comps.wait([p["id"] for p in prompts])
    check = jsonschema_rs.validator_for(LABEL)
    for c in out.values():
        assert c["status"] == "ok", c
        assert check.is_valid(c["json"]), c["json"]
    sent = fake.calls("json")[0].body["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL}}


async def test_an_answer_that_is_not_valid_json_ends_invalid_output_after_one_more_answer(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    fake.set_profile("broken", invalid_output_rate=1.0)
    upsert_row(pg_dsn, _row("m", "fake", fake.endpoint("broken")))
    await _topics(s)
    fmt = {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL}}
    async with App(s, http=False).running(), Completions(s) as comps:
        await _send(s, [{"id": "bad", "model": "m", "prompt": "classify", "response_format": fmt}])
        c = (await comps.wait(["bad"]))["bad"]
    assert c["status"] == "error" and c["error"]["type"] == "invalid_output", c
    assert c["text"] and c["json"] is None  # the raw answer, kept for the consumer to see
    assert fake.counters("broken")["requests"] == 2  # LLM_WORKER_OUTPUT_RETRIES=1


async def test_a_field_no_candidate_can_honour_ends_before_any_call(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """TGI's /generate carries no tools: the prompt is refused naming the field and the
    provider, and the provider is never called; with a fallback that can carry them, the
    fallback answers."""
    s = make_settings()
    generate = f"{fake.url}/tgi/generate"
    upsert_row(pg_dsn, _row("tgi", "huggingface", generate))
    upsert_row(
        pg_dsn,
        _row(
            "tgi-fb",
            "huggingface",
            generate,
            fallback_provider="fake",
            fallback_endpoint=fake.endpoint("fb"),
        ),
    )
    await _topics(s)
    ask = {"prompt": "weather?", "tools": [WEATHER], "tool_choice": "required"}
    async with App(s, http=False).running(), Completions(s) as comps:
        await _send(
            s, [{"id": "no", "model": "tgi", **ask}, {"id": "fb", "model": "tgi-fb", **ask}]
        )
        out = await comps.wait(["no", "fb"])
    refused = out["no"]
    assert refused["status"] == "error" and refused["error"]["type"] == "unsupported_feature"
    assert "`tools`" in refused["error"]["message"] and "huggingface" in refused["error"]["message"]
    assert refused["attempts"] == 0
    assert fake.counters("tgi")["requests"] == 0
    answered = out["fb"]
    assert answered["status"] == "ok" and answered["fallback_used"] is True, answered
    assert answered["tool_calls"][0]["name"] == "weather"
