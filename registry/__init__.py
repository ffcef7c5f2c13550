"""PostgreSQL model registry: schema migrations, admin helpers, the worker's live cache."""

from llm_worker.registry.cache import RegistryCache
from llm_worker.registry.errors import (
    DanglingFallback,
    FallbackCycle,
    FallbackError,
    FallbackTooDeep,
    InvalidRow,
    MigrationError,
    ModelDisabled,
    RegistryError,
    RegistryUnavailable,
    ResolveError,
    UnknownModel,
)
from llm_worker.registry.migrate import migrate, pending
from llm_worker.registry.models import COLUMNS, ModelRow
from llm_worker.registry.resolve import DEFAULT_MAX_DEPTH, Candidate, resolve, validate
from llm_worker.registry.store import (
    delete_row,
    get_row,
    list_rows,
    set_enabled,
    update_row,
    upsert_row,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_DEPTH",
    "Candidate",
    "DanglingFallback",
    "FallbackCycle",
    "FallbackError",
    "FallbackTooDeep",
    "InvalidRow",
    "MigrationError",
    "ModelDisabled",
    "ModelRow",
    "RegistryCache",
    "RegistryError",
    "RegistryUnavailable",
    "ResolveError",
    "UnknownModel",
    "delete_row",
    "get_row",
    "list_rows",
    "migrate",
    "pending",
    "resolve",
    "set_enabled",
    "update_row",
    "upsert_row",
    "validate",
]
