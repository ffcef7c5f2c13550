"""What the retry loop does with the prompt's structured fields (`worker.calling.caller` with
`calling.output`): a candidate that cannot honour a field is skipped before any call, an answer
that is not what the prompt asked is asked for again and then ends as `invalid_output`, never
as an answer. Against the scripted provider of `caller_fakes.py`."""

from __future__ import annotations

import msgspec
import pytest

from llm_worker.adapters.base import (
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)
from llm_worker.adapters.sessions import SessionPool
from llm_worker.worker.calling.caller import CallFailed

from .caller_fakes import REQUEST, Setup

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}},
    "required": ["label"],
    "additionalProperties": False,
}
JSON_REQUEST = msgspec.structs.replace(
    REQUEST, response_format=ResponseFormat(type="json_schema", name="label", schema=SCHEMA)
)
WEATHER = Tool(
    name="weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TOOL_REQUEST = msgspec.structs.replace(
    REQUEST, tools=(WEATHER,), tool_choice=ToolChoice("function", "weather")
)


def text(t: str, finish: str = "stop") -> ProviderResult:
    return ProviderResult(text=t, finish_reason=finish, input_tokens=1, output_tokens=1)


def tool_call(args: dict[str, object], unparsed: str | None = None) -> ProviderResult:
    call = ToolCall("call_1", "weather", args, unparsed)
    return ProviderResult(text="", finish_reason="tool_calls", tool_calls=(call,))


async def _call(s: Setup, request: ProviderRequest) -> object:
    return await s.caller.call(s.cands, request, deadline=s.clock.now + 60)


async def test_a_candidate_that_cannot_honour_a_field_is_skipped_for_one_that_can(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.refuses = {"http://p": "`tools` is not supported by provider fake"}
    s.provider.script = {"http://f": [tool_call({"city": "Oslo"})]}
    res = await _call(s, TOOL_REQUEST)
    assert s.provider.called == ["http://f"]  # the primary was never called
    assert res.candidate is s.fallback  # type: ignore[attr-defined]


async def test_when_no_candidate_can_honour_a_field_it_ends_before_any_call(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    why = "`tools` (with `tool_choice` and tool turns) is not supported by provider fake"
    s.provider.refuses = {"http://p": why, "http://f": why}
    with pytest.raises(CallFailed) as failed:
        await _call(s, TOOL_REQUEST)
    assert s.provider.called == []
    assert failed.value.error.type == "unsupported_feature"
    assert why in str(failed.value.error) and failed.value.attempts == 0


async def test_an_answer_valid_for_the_schema_is_returned_parsed(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [text('{"label": "spam"}')]}
    res = await _call(s, JSON_REQUEST)
    assert res.json == {"label": "spam"}  # type: ignore[attr-defined]
    assert s.provider.requests[0].response_format == JSON_REQUEST.response_format


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ('{"label": "eggs"}', "not valid for the schema"),
        ("label: spam", "not JSON"),
        ('{"label": "spam"', "not JSON"),
    ],
)
async def test_an_answer_that_fails_its_check_is_asked_again_once_then_invalid_output(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool, bad: str, why: str
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [text(bad), text(bad)]}
    with pytest.raises(CallFailed) as failed:
        await _call(s, JSON_REQUEST)
    err = failed.value.error
    assert s.provider.called == ["http://p", "http://p"]  # LLM_WORKER_OUTPUT_RETRIES=1
    assert err.type == "invalid_output" and why in err.message
    assert getattr(err, "raw", None) == bad and failed.value.attempts == 2
    assert (
        s.metrics.registry.get_sample_value(
            "llm_worker_invalid_outputs_total", {"provider": "fake"}
        )
        == 2
    )


async def test_a_second_answer_that_passes_is_the_answer(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [text("nope"), text('{"label": "ham"}')]}
    res = await _call(s, JSON_REQUEST)
    assert res.json == {"label": "ham"} and res.attempts == 2  # type: ignore[attr-defined]


async def test_no_more_answers_are_asked_with_output_retries_zero(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.output_retries = 0
    s.provider.script = {"http://p": [text("nope"), text('{"label": "ham"}')]}
    with pytest.raises(CallFailed):
        await _call(s, JSON_REQUEST)
    assert s.provider.called == ["http://p"]


async def test_a_json_answer_cut_at_max_tokens_is_not_an_answer(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.output_retries = 0
    s.provider.script = {"http://p": [text('{"label": "spam"}', finish="length")]}
    with pytest.raises(CallFailed) as failed:
        await _call(s, JSON_REQUEST)
    assert "cut at max_tokens" in failed.value.error.message


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (tool_call({}, unparsed="city=Oslo"), "arguments are not a JSON object"),
        (tool_call({"city": 7}), "arguments"),
        (tool_call({}), "arguments"),  # `city` is required
        (text("It is sunny."), "forces a tool call"),
    ],
)
async def test_tool_calls_are_checked_against_the_tools_parameters(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool, answer: ProviderResult, why: str
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.output_retries = 0
    s.provider.script = {"http://p": [answer]}
    with pytest.raises(CallFailed) as failed:
        await _call(s, TOOL_REQUEST)
    assert failed.value.error.type == "invalid_output" and why in failed.value.error.message


async def test_a_valid_tool_call_is_the_answer(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [tool_call({"city": "Oslo"})]}
    res = await _call(s, TOOL_REQUEST)
    assert res.result.tool_calls[0].arguments == {"city": "Oslo"}  # type: ignore[attr-defined]


async def test_plain_text_prompts_are_not_checked(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [text("not json {", finish="length")]}
    res = await _call(s, REQUEST)
    assert res.result.text == "not json {" and res.json is None  # type: ignore[attr-defined]
