"""A row of `model_registry`, as the worker sees it."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

import msgspec

__all__ = ["COLUMNS", "ENDPOINT_COLUMNS", "ModelRow", "endpoint_problem", "row_problems"]


class ModelRow(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    provider: str
    endpoint: str
    upstream_model: str
    max_tokens: int | None = None
    enabled: bool = True
    fallback_provider: str | None = None
    fallback_endpoint: str | None = None
    fallback_model: str | None = None
    fallback_model_id: str | None = None
    api_key_secret: str | None = None
    input_cost_per_1k: float = 0.0
    output_cost_per_1k: float = 0.0
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    timeout_ms: int = 30_000
    updated_at: datetime | None = None
    routing_objective: str | None = None  # priority | latency | cost | reliability (003)
    dialect: str = "openai"  # openai_compatible JSON-schema dialect: openai | llama_cpp (004)
    structured_outputs: bool = False  # the model takes a JSON schema natively (004)
    cached_input_cost_per_1k: float | None = None  # None: input_cost_per_1k (004)
    cache_write_cost_per_1k: float | None = None  # None: input_cost_per_1k (004)
    canned_response: str | None = None  # answered (ok, canned) when every candidate failed
    stream: bool | None = None  # stream its prompts that do not say; None: the worker's (005)
    priority: str | None = None  # high | normal | low for prompts that do not say (006)
    lane: str | None = None  # online | batch for prompts that do not say (007)
    batch_input_cost_per_1k: float | None = None  # None: half input_cost_per_1k (007)
    batch_output_cost_per_1k: float | None = None  # None: half output_cost_per_1k (007)
    batch_on_error: str | None = None  # online | error for errored batch requests (007)


COLUMNS: tuple[str, ...] = ModelRow.__struct_fields__

ENDPOINT_COLUMNS = ("endpoint", "fallback_endpoint")


def endpoint_problem(url: str | None) -> str | None:
    """Why `url` cannot be an endpoint, or None: an endpoint is empty (the provider's public
    default) or an absolute http(s) URL with a host (`vllm:8000/v1` has no scheme)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an absolute http(s) URL such as http://vllm:8000/v1"
    return None


def row_problems(fields: dict[str, object]) -> list[str]:
    """Problems of the endpoint columns among `fields` (column -> value)."""
    out = []
    for col in ENDPOINT_COLUMNS:
        value = fields.get(col)
        problem = endpoint_problem(value if isinstance(value, str) else None)
        if problem:
            out.append(f"{col}: {problem}")
    return out
