"""The OpenAI chat-completions wire format as the fake provider reads and writes it."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ChatRequest",
    "Completion",
    "OutChoice",
    "OutMessage",
    "OutUsage",
    "decode_any",
    "decode_request",
    "encode",
    "text_of",
]


class InMessage(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[InMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None


class OutMessage(msgspec.Struct):
    role: str
    content: str


class OutChoice(msgspec.Struct):
    index: int
    message: OutMessage
    finish_reason: str


class OutUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[OutChoice]
    usage: OutUsage


encode = msgspec.json.Encoder().encode
decode_request = msgspec.json.Decoder(ChatRequest).decode
decode_any = msgspec.json.Decoder().decode


def text_of(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return " ".join(p for p in parts if isinstance(p, str))
