"""Shared PostgreSQL bits: the row query, the row factory, DSN redaction."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from psycopg import sql
from psycopg.rows import BaseRowFactory, kwargs_row

from registry.models import COLUMNS, ModelRow

TABLE = "model_registry"
CHANNEL = "model_registry"
APP_NAME = "llm-worker-registry"

_URL_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)")


def redact_dsn(dsn: str) -> str:
    """`dsn` with any password replaced by `***` (URL userinfo, `?password=`, `password=`)."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", dsn))


def _model_row(**values: Any) -> ModelRow:
    for name in ("input_cost_per_1k", "output_cost_per_1k"):
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
