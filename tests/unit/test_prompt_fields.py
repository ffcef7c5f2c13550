"""The structured fields of a prompt on intake (`worker.prompt_fields` through
`messages.decode_prompt`): what decodes, what is refused with a `validation_error` naming the
field, the provider-neutral form the adapters get, and the dedup key covering each field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_worker.adapters.base import ImagePart, TextPart, ToolCall, ToolChoice
from llm_worker.worker.dedup import dedup_key
from llm_worker.worker.messages import Prompt, Rejected, decode_prompt, provider_request

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"


def _image_turn(role: str, url: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "image_url", "image_url": {"url": url}}]}


def dec(doc: dict[str, Any]) -> Prompt | Rejected:
    base = {"id": "r1", "model": "m"}
    raw = json.dumps({**base, **doc}).encode()
    return decode_prompt(raw, max_bytes=1_000_000, max_metadata_bytes=512)


def ok(doc: dict[str, Any]) -> Prompt:
    p = dec(doc)
    assert isinstance(p, Prompt), p
    return p


def test_a_tool_round_trip_decodes_and_reaches_the_adapters_parsed() -> None:
    p = ok(
        {
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
            ],
            "tools": [TOOL],
            "tool_choice": "auto",
        }
    )
    req = provider_request(p)
    assert req.messages is not None
    assert req.messages[1].tool_calls == (ToolCall("call_1", "weather", {"city": "Oslo"}),)
    assert req.messages[2].role == "tool" and req.messages[2].tool_call_id == "call_1"
    assert req.tools is not None and req.tools[0].name == "weather"
    assert req.tools[0].parameters["properties"] == {"city": {"type": "string"}}
    assert req.tool_choice == ToolChoice("auto")


def test_parts_json_schema_choice_and_effort_reach_the_adapters() -> None:
    p = ok(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in it?"},
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    ],
                }
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "label", "schema": SCHEMA, "strict": True},
            },
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "reasoning_effort": "low",
        }
    )
    req = provider_request(p)
    assert req.messages is not None
    content = req.messages[0].content
    assert isinstance(content, tuple) and isinstance(content[0], TextPart)
    assert isinstance(content[1], ImagePart) and content[1].image_url.detail == "low"
    assert req.messages[0].text == "What is in it?"
    assert req.response_format is not None and req.response_format.schema == SCHEMA
    assert req.response_format.name == "label" and req.response_format.strict is True
    assert req.tool_choice == ToolChoice("function", "weather")
    assert req.reasoning_effort == "low"


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "`tool_call_id`"),
        ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]}, "tool_call_id"),
        ({"messages": [{"role": "user"}]}, "`content` is missing"),
        ({"messages": [{"role": "user", "content": []}]}, "empty list"),
        ({"messages": [_image_turn("user", "http://x/a.png")]}, "https: or data:"),
        ({"messages": [_image_turn("system", PNG)]}, "images go in `user` turns"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "weather", "arguments": "[1]"}}
                        ],
                    }
                ]
            },
            "arguments is not a JSON object",
        ),
        ({"prompt": "x", "response_format": {"type": "json_schema"}}, "needs its `json_schema`"),
        (
            {
                "prompt": "x",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "objekt"}},
                },
            },
            "`response_format.json_schema.schema` is not a valid JSON Schema",
        ),
        (
            {
                "prompt": "x",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"$ref": "https://evil.example/s"}},
                },
            },
            "only references inside it",
        ),
        ({"prompt": "x", "tool_choice": "required"}, "has no `tools`"),
        (
            {
                "prompt": "x",
                "tools": [TOOL],
                "tool_choice": {"type": "function", "function": {"name": "other"}},
            },
            "not in `tools`",
        ),
        ({"prompt": "x", "tools": [TOOL, TOOL]}, "a second tool named"),
        (
            {
                "prompt": "x",
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}
                ],
            },
            "`tools[0].function.parameters` is not a valid JSON Schema",
        ),
        ({"prompt": "x", "reasoning_effort": "max"}, "reasoning_effort"),
        ({"prompt": "x", "response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_a_broken_rule_is_a_validation_error_naming_the_field(
    doc: dict[str, Any], names: str
) -> None:
    r = dec(doc)
    assert isinstance(r, Rejected) and not r.dlq and r.reason == "validation_error", r
    assert names in r.message, r.message


def _key(doc: dict[str, Any]) -> str:
    return dedup_key("m", provider_request(ok({"prompt": "x", **doc})))


def test_the_dedup_key_covers_every_field_that_changes_the_answer() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
    other = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}
    keys = [
        _key({}),
        _key({"response_format": {"type": "json_object"}}),
        _key({"response_format": fmt}),
        _key({"response_format": other}),
        _key({"tools": [TOOL]}),
        _key({"tools": [TOOL], "tool_choice": "required"}),
        _key({"reasoning_effort": "high"}),
    ]
    assert len(set(keys)) == len(keys)
    assert _key({"response_format": fmt}) == _key({"response_format": fmt})
