"""Shared PostgreSQL bits: the row query, the row factory, DSN redaction (from `registry.dsn`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import BaseRowFactory, kwargs_row

from llm_worker.registry.dsn import redact_dsn, redact_error
from llm_worker.registry.models import COLUMNS, ModelRow

__all__ = [
    "APP_NAME",
    "CHANNEL",
    "COLUMN_LIST",
    "DB_ERRORS",
    "ROW_FACTORY",
    "SELECT_ALL",
    "SELECT_ONE",
    "TABLE",
    "redact_dsn",
    "redact_error",
]

TABLE = "model_registry"
CHANNEL = "model_registry"
APP_NAME = "llm-worker-registry"

DB_ERRORS = (psycopg.Error, OSError)
"""What a failed connect or query raises (OSError includes TimeoutError)."""


def _model_row(**values: Any) -> ModelRow:
    for name in (
        "input_cost_per_1k",
        "output_cost_per_1k",
        "cached_input_cost_per_1k",
        "cache_write_cost_per_1k",
    ):
        value = values.get(name)
        if isinstance(value, Decimal):
            values[name] = float(value)
    return ModelRow(**values)


ROW_FACTORY: BaseRowFactory[ModelRow] = kwargs_row(_model_row)

COLUMN_LIST = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
SELECT_ALL = sql.SQL("SELECT {} FROM {} ORDER BY model_id").format(
    COLUMN_LIST, sql.Identifier(TABLE)
)
SELECT_ONE = sql.SQL("SELECT {} FROM {} WHERE model_id = %s").format(
    COLUMN_LIST, sql.Identifier(TABLE)
)
