"""Secrets given as files: `DATABASE_URL` and the Kafka credentials, like the API keys, can live
in files that Kubernetes mounts from a Secret instead of in the environment.

For each of SECRET_FILE_VARS, `<VAR>_FILE=/path` names the file (the convention of the
postgres image), or else a file named `<VAR>` in `LLM_WORKER_SECRETS_DIR` is read. The variable
itself wins over the directory; it and `<VAR>_FILE` together are refused. One trailing line
break is dropped, nothing else (a password may end in a space). A file that cannot be used is
a `SecretFileError` naming the variable and the path, never the content.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["SECRET_FILE_VARS", "SecretFileError", "read_secret_files"]

SECRET_FILE_VARS = (
    "DATABASE_URL",
    "LLM_WORKER_KAFKA_SASL_USERNAME",
    "LLM_WORKER_KAFKA_SASL_PASSWORD",
    "LLM_WORKER_KAFKA_SSL_KEY_PASSWORD",
    "LLM_WORKER_KAFKA_SSL_KEYSTORE_PASSWORD",
    "LLM_WORKER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
)
"""Only these: other `LLM_WORKER_KAFKA_*_FILE` variables stay librdkafka properties (some of its
property names end in `.file`)."""


class SecretFileError(ValueError):
    """A secret's file is missing, unreadable, empty or not UTF-8, or set twice."""


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().rstrip("\r\n")
    except OSError as exc:
        raise SecretFileError(
            f"{what} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} is not UTF-8 text") from None
    if not value:
        raise SecretFileError(f"{what} is empty")
    return value


def read_secret_files(
    source: dict[str, str], wanted: Collection[str], overrides: Mapping[str, Any], secrets_dir: str
) -> None:
    """Fill `source[VAR]` (the environment being read) from `VAR_FILE` or `secrets_dir`, for
    each of SECRET_FILE_VARS the command uses (`wanted`: its setting names; `overrides`:
    values given on its command line, which win); drop every `VAR_FILE` from `source`."""
    uses_kafka = "kafka_extra" in wanted or "kafka_bootstrap_servers" in wanted
    for var in SECRET_FILE_VARS:
        file_var = var + "_FILE"
        path = source.pop(file_var, None)
        used = "database_url" in wanted if var == "DATABASE_URL" else uses_kafka
        if not used or (var == "DATABASE_URL" and "database_url" in overrides):
            continue
        if path is not None:
            if var in source:
                raise SecretFileError(f"{var} and {file_var} are both set: set one of them")
            source[var] = _read(path, f"{file_var}={path!r}")
        elif var not in source and secrets_dir:
            in_dir = os.path.join(secrets_dir, var)
            if os.path.isfile(in_dir):
                source[var] = _read(in_dir, f"{var} from the file {in_dir!r}")
