"""Turn a requested model_id into the ordered list of endpoints that may serve it.

Order: the row's primary (if the row is enabled), then its inline fallback (any of
`fallback_provider` / `fallback_endpoint` / `fallback_model` not NULL; the NULL parts default to
the row's own `provider` / `endpoint` / `upstream_model`), then, if `fallback_model_id` is set,
the candidates of that row, recursively. Everything after the requested row's primary is marked
`fallback=True`. A disabled row in the chain contributes only its own fallbacks.

`resolve` is pure and cheap; `RegistryCache` memoizes it per snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from llm_worker.adapters.secrets import MissingSecret, SecretStore
from llm_worker.registry.errors import (
    DanglingFallback,
    FallbackCycle,
    FallbackTooDeep,
    ModelDisabled,
    ResolveError,
    UnknownModel,
)
from llm_worker.registry.models import ENDPOINT_COLUMNS, ModelRow, row_problems

__all__ = ["DEFAULT_MAX_DEPTH", "Candidate", "resolve", "validate"]

DEFAULT_MAX_DEPTH = 4
"""How many `fallback_model_id` links are followed at most."""


# gc=False: not walked by the collector (see ToolCall in adapters/base.py)
class Candidate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One endpoint to try. `row` is the registry row whose secret, prices, timeout and
    max_tokens apply to the call."""

    provider: str
    endpoint: str
    upstream_model: str
    endpoint_name: str
    row: ModelRow
    fallback: bool


def has_inline_fallback(row: ModelRow) -> bool:
    return (
        row.fallback_provider is not None
        or row.fallback_endpoint is not None
        or row.fallback_model is not None
    )


def _own_candidates(row: ModelRow, *, chained: bool) -> list[Candidate]:
    out: list[Candidate] = []
    if row.enabled:
        out.append(
            Candidate(
                provider=row.provider,
                endpoint=row.endpoint,
                upstream_model=row.upstream_model,
                endpoint_name=f"{row.model_id}/primary",
                row=row,
                fallback=chained,
            )
        )
    if has_inline_fallback(row):
        out.append(
            Candidate(
                provider=row.provider if row.fallback_provider is None else row.fallback_provider,
                endpoint=row.endpoint if row.fallback_endpoint is None else row.fallback_endpoint,
                upstream_model=(
                    row.upstream_model if row.fallback_model is None else row.fallback_model
                ),
                endpoint_name=f"{row.model_id}/fallback",
                row=row,
                fallback=True,
            )
        )
    return out


def fallback_chain(rows: Mapping[str, ModelRow], model_id: str) -> list[ModelRow]:
    """The rows reached from `model_id` by `fallback_model_id` links, the requested row first.

    Raises UnknownModel, FallbackCycle or DanglingFallback. Terminates on any graph: every
    step visits a new row, so at most `len(rows)` steps are taken.
    """
    row = rows.get(model_id)
    if row is None:
        raise UnknownModel(model_id)
    chain = [row]
    seen = {model_id}
    while row.fallback_model_id is not None:
        next_id = row.fallback_model_id
        if next_id in seen:
            raise FallbackCycle([*(r.model_id for r in chain), next_id])
        next_row = rows.get(next_id)
        if next_row is None:
            raise DanglingFallback(row.model_id, next_id, [r.model_id for r in chain])
        seen.add(next_id)
        chain.append(next_row)
        row = next_row
    return chain


def resolve(
    rows: Mapping[str, ModelRow], model_id: str, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> list[Candidate]:
    """Candidates for `model_id`, best first.

    Raises UnknownModel, ModelDisabled (nothing left to serve), FallbackCycle, DanglingFallback
    or FallbackTooDeep (more than `max_depth` fallback_model_id links).
    """
    if max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    chain = fallback_chain(rows, model_id)
    if len(chain) - 1 > max_depth:
        raise FallbackTooDeep([r.model_id for r in chain], max_depth)
    out = _own_candidates(chain[0], chained=False)
    for row in chain[1:]:
        out.extend(_own_candidates(row, chained=True))
    if not out:
        raise ModelDisabled(model_id, [r.model_id for r in chain])
    return out


def validate(
    rows: Mapping[str, ModelRow],
    secrets: SecretStore | None = None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[str]:
    """Human-readable problems of every row: broken fallback chains, rows nothing can serve,
    and (when `secrets` is given) `api_key_secret` names that the secret store cannot find."""
    problems: list[str] = []
    secret_errors: dict[str, str | None] = {}
    for model_id in sorted(rows):
        row = rows[model_id]
        problems.extend(
            f"{model_id}: {p}" for p in row_problems({c: getattr(row, c) for c in ENDPOINT_COLUMNS})
        )
        try:
            resolve(rows, model_id, max_depth=max_depth)
        except ResolveError as exc:
            problems.append(f"{model_id}: {exc}")
        if secrets is None or row.api_key_secret is None:
            continue
        name = row.api_key_secret
        if name not in secret_errors:
            try:
                secrets.get(name)
            except MissingSecret as exc:
                secret_errors[name] = str(exc)
            else:
                secret_errors[name] = None
        error = secret_errors[name]
        if error is not None:
            problems.append(f"{model_id}: api_key_secret {name!r} cannot be read: {error}")
    return problems
