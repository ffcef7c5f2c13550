"""Is the answer what the prompt asked for? A JSON answer must parse (an object for
`json_object`) and be valid for its `json_schema`; a tool call's arguments must be an object
valid for that tool's `parameters`; a forced tool call must be there; an answer cut at
`max_tokens` satisfies neither. The caller tries again (`LLM_WORKER_OUTPUT_RETRIES`), then
ends with `invalid_output`: such an answer is never `ok`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llm_worker.adapters.base import ProviderRequest, ProviderResult, ToolCall

from ..jsonschemas import instance_problem

__all__ = ["NO_JSON", "check_output"]

NO_JSON: Any = None
"""The parsed answer when the prompt asked no JSON (the completion's `json` stays null)."""

_decode = msgspec.json.decode


def _tool_problem(request: ProviderRequest, call: ToolCall) -> str | None:
    if call.unparsed is not None:
        return f"tool call {call.name!r}: arguments are not a JSON object: {call.unparsed[:200]!r}"
    tools = {t.name: t for t in request.tools or ()}
    tool = tools.get(call.name)
    if tool is None:
        return f"tool call {call.name!r}: no such tool in the prompt's `tools`"
    why = instance_problem(tool.parameters, call.arguments)
    return None if why is None else f"tool call {call.name!r}: arguments {why}"


def _calls_problem(request: ProviderRequest, result: ProviderResult) -> str | None:
    for call in result.tool_calls:
        why = _tool_problem(request, call)
        if why is not None:
            return why
    choice = request.tool_choice
    if choice is not None and choice.mode in ("required", "function") and not result.tool_calls:
        return "the prompt's `tool_choice` forces a tool call; the answer has none"
    if choice is not None and choice.mode == "function":
        other = [c.name for c in result.tool_calls if c.name != choice.name]
        if other:
            return f"`tool_choice` forces {choice.name!r}; the answer called {other[0]!r}"
    return None


def _json_problem(request: ProviderRequest, text: str) -> tuple[Any, str | None]:
    fmt = request.response_format
    assert fmt is not None
    try:
        value = _decode(text)
    except msgspec.DecodeError as exc:
        return NO_JSON, f"the answer is not JSON ({exc}): {text[:200]!r}"
    if fmt.type == "json_object" and not isinstance(value, dict):
        return NO_JSON, "the answer is JSON but not an object"
    if fmt.type == "json_schema" and fmt.schema is not None:
        why = instance_problem(fmt.schema, value)
        if why is not None:
            return NO_JSON, f"the answer is not valid for the schema: {why}"
    return value, None


def check_output(request: ProviderRequest, result: ProviderResult) -> tuple[Any, str | None]:
    """(the parsed JSON answer or `NO_JSON`, why the answer fails the prompt or None)."""
    fmt = request.response_format
    wants_json = fmt is not None and fmt.wants_json
    if not wants_json and not request.tools:
        return NO_JSON, None  # plain text: nothing to check (the fast path)
    if result.finish_reason == "length":
        return NO_JSON, "the answer was cut at max_tokens (finish_reason length)"
    why = _calls_problem(request, result)
    if why is not None or not wants_json or result.tool_calls:
        return NO_JSON, why
    return _json_problem(request, result.text)
