"""`llm-worker bench-adapters`: CPU cost of each adapter's request building and response parsing.

No network: the time of one HTTP round trip is the same for every adapter (see `bench`); what
differs between providers is the work on either side of it, measured here per call.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import Message, ProviderRequest, Target
from llm_worker.adapters.secrets import Secret

__all__ = ["run_adapter_bench"]

_TEXT = "Kafka is a distributed log used for streaming data between services."
_ENDPOINTS = {
    "openai": "http://127.0.0.1:1/v1",
    "openai_compatible": "http://127.0.0.1:1/v1",
    "fake": "http://127.0.0.1:1/v1",
    "azure_openai": "http://127.0.0.1:1",
    "anthropic": "http://127.0.0.1:1",
    "huggingface": "http://127.0.0.1:1/v1",
    "huggingface_generate": "http://127.0.0.1:1/generate",
    "gemini": "http://127.0.0.1:1",
}


def _openai_body() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _TEXT},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 24, "completion_tokens": 14, "total_tokens": 38},
    }


_BODIES: dict[str, dict[str, Any]] = {
    "openai": _openai_body(),
    "openai_compatible": _openai_body(),
    "fake": _openai_body(),
    "azure_openai": _openai_body(),
    "huggingface": _openai_body(),
    "anthropic": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": _TEXT}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 24, "output_tokens": 14},
    },
    "huggingface_generate": {
        "generated_text": _TEXT,
        "details": {"finish_reason": "eos_token", "generated_tokens": 14, "prefill": []},
    },
    "gemini": {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": _TEXT}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": 24, "candidatesTokenCount": 14},
    },
}


def run_adapter_bench(calls: int = 20_000) -> int:
    request = ProviderRequest(
        messages=(
            Message("system", "You are terse."),
            Message("user", "What is Kafka, in one line? Answer for a platform engineer."),
        ),
        max_tokens=64,
        temperature=0.2,
    )
    results: dict[str, dict[str, float]] = {}
    for name, endpoint in _ENDPOINTS.items():
        target = Target(
            provider=name,
            endpoint=endpoint,
            model="m",
            endpoint_name=f"bench/{name}",
            api_key=Secret("bench", "sk-bench"),
            timeout_ms=10_000,
            max_tokens=256,
        )
        adapter: Any = get_adapter(name.removesuffix("_generate"))
        if hasattr(adapter, "form_for"):  # huggingface: the form the endpoint selects
            adapter = adapter.form_for(target)
        payload = msgspec.json.encode(_BODIES[name])
        headers = {"x-request-id": "r-1", "request-id": "r-1"}
        adapter.parse_result(target, payload, "r-1", headers)  # warm up; fails loudly if wrong
        t0 = time.perf_counter()
        for _ in range(calls):
            adapter.build_body(target, request)
            adapter.headers_for(target)
        t1 = time.perf_counter()
        for _ in range(calls):
            adapter.parse_result(target, payload, "r-1", headers)
        t2 = time.perf_counter()
        results[name] = {
            "build_us": round((t1 - t0) / calls * 1e6, 2),
            "parse_us": round((t2 - t1) / calls * 1e6, 2),
        }
    print(json.dumps({"calls_per_adapter": calls, "adapters": results}))
    for name, r in results.items():
        print(f"  {name:<22} build {r['build_us']:>6.2f} us   parse {r['parse_us']:>6.2f} us")
    return 0
