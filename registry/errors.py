"""Errors of the model registry.

    RegistryError
     ├── ResolveError               a request's model cannot be served (terminal for that request)
     │    ├── UnknownModel          no row has this model_id
     │    ├── ModelDisabled         the row is disabled and no fallback is left to serve it
     │    └── FallbackError         the fallback chain is misconfigured
     │         ├── FallbackCycle    a model_id appears twice in its chain (a -> b -> a)
     │         ├── DanglingFallback fallback_model_id names a row that does not exist
     │         └── FallbackTooDeep  the chain is longer than the allowed depth
     ├── RegistryUnavailable        no snapshot loaded yet and PostgreSQL cannot be reached
     ├── InvalidRow                 an admin write broke a column rule (also a ValueError)
     └── MigrationError             a migration file is misnamed, or its SQL failed

`retryable` says whether trying the same request again later may succeed.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DanglingFallback",
    "FallbackCycle",
    "FallbackError",
    "FallbackTooDeep",
    "InvalidRow",
    "MigrationError",
    "ModelDisabled",
    "RegistryError",
    "RegistryUnavailable",
    "ResolveError",
    "UnknownModel",
]


def _chain(chain: Sequence[str]) -> str:
    return " -> ".join(chain)


class RegistryError(Exception):
    """Root of every error raised by `registry`."""

    retryable: bool = False


class ResolveError(RegistryError):
    """The requested model cannot be turned into candidates to call."""


class UnknownModel(ResolveError, LookupError):
    def __init__(self, model_id: str) -> None:
        super().__init__(f"unknown model {model_id!r}: no such model_id in model_registry")
        self.model_id = model_id


class ModelDisabled(ResolveError):
    def __init__(self, model_id: str, chain: Sequence[str] = ()) -> None:
        via = f" (followed {_chain(chain)})" if len(chain) > 1 else ""
        super().__init__(f"model {model_id!r} is disabled and has no enabled fallback{via}")
        self.model_id = model_id
        self.chain = tuple(chain) or (model_id,)


class FallbackError(ResolveError):
    """The fallback_model_id chain of a row is misconfigured."""


class FallbackCycle(FallbackError):
    def __init__(self, chain: Sequence[str]) -> None:
        super().__init__(f"fallback cycle for model {chain[0]!r}: {_chain(chain)}")
        self.model_id = chain[0]
        self.chain = tuple(chain)


class DanglingFallback(FallbackError):
    def __init__(self, model_id: str, missing: str, chain: Sequence[str] = ()) -> None:
        via = f" (chain {_chain((*chain, missing))})" if len(chain) > 1 else ""
        super().__init__(
            f"model {model_id!r} has fallback_model_id {missing!r}, "
            f"which is not a model_id in model_registry{via}"
        )
        self.model_id = model_id
        self.missing = missing
        self.chain = tuple(chain) or (model_id,)


class FallbackTooDeep(FallbackError):
    def __init__(self, chain: Sequence[str], max_depth: int) -> None:
        super().__init__(
            f"fallback chain of model {chain[0]!r} follows {len(chain) - 1} fallback_model_id "
            f"links, more than the limit of {max_depth}: {_chain(chain)}"
        )
        self.model_id = chain[0]
        self.chain = tuple(chain)
        self.max_depth = max_depth


class RegistryUnavailable(RegistryError):
    """No registry snapshot is loaded and PostgreSQL cannot be reached (DSN password redacted)."""

    retryable = True


class InvalidRow(RegistryError, ValueError):
    """An admin write was rejected: unknown column, or a value breaking a column constraint."""


class MigrationError(RegistryError):
    """A migration could not be applied; `filename` names the file, `sql_error` the SQL error."""

    def __init__(self, message: str, *, filename: str | None = None, sql_error: str | None = None):
        super().__init__(message)
        self.filename = filename
        self.sql_error = sql_error
