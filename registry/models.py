"""A row of `model_registry`, as the worker sees it."""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["COLUMNS", "ModelRow"]


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


COLUMNS: tuple[str, ...] = ModelRow.__struct_fields__
