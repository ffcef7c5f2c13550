"""Which of the request's optional fields an adapter honours: each adapter declares its
`features`, and a request that uses one it lacks is refused before any call
(`unsupported_feature`), so nothing a prompt asks for is silently dropped.

    JSON_OBJECT        response_format {"type": "json_object"}
    JSON_SCHEMA        response_format {"type": "json_schema", ...}
    TOOLS              tools, tool_choice, and tool turns in the history
    IMAGES             image_url parts in messages[].content
    REASONING          reasoning_effort
"""

from __future__ import annotations

from .base import ProviderRequest, Target

__all__ = [
    "ALL_FEATURES",
    "IMAGES",
    "JSON_OBJECT",
    "JSON_SCHEMA",
    "REASONING",
    "TOOLS",
    "unsupported_message",
    "used_features",
]

JSON_OBJECT = "json_object"
JSON_SCHEMA = "json_schema"
TOOLS = "tools"
IMAGES = "images"
REASONING = "reasoning_effort"
ALL_FEATURES = frozenset({JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES, REASONING})

_FIELD = {
    JSON_OBJECT: '`response_format` {"type": "json_object"}',
    JSON_SCHEMA: '`response_format` {"type": "json_schema"}',
    TOOLS: "`tools` (with `tool_choice` and tool turns)",
    IMAGES: "`image_url` content parts",
    REASONING: "`reasoning_effort`",
}


def used_features(request: ProviderRequest) -> list[str]:
    """The optional fields `request` uses, in a fixed order."""
    used: list[str] = []
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        used.append(JSON_OBJECT if fmt.type == "json_object" else JSON_SCHEMA)
    messages = request.messages or ()
    if (
        request.tools
        or request.tool_choice is not None
        or any(m.tool_calls or m.tool_call_id is not None or m.role == "tool" for m in messages)
    ):
        used.append(TOOLS)
    if any(m.images for m in messages):
        used.append(IMAGES)
    if request.reasoning_effort is not None:
        used.append(REASONING)
    return used


def unsupported_message(
    features: frozenset[str], target: Target, request: ProviderRequest
) -> str | None:
    """The refusal for the first field `request` uses outside `features`, naming the field and
    the provider; None when every field it uses is honoured."""
    for feature in used_features(request):
        if feature not in features:
            return (
                f"{_FIELD[feature]} is not supported by provider {target.provider} "
                f"(model {target.model})"
            )
    return None
