"""API keys: read by name from a secrets directory (one file per secret) or the environment.

A `Secret` never shows its value in `repr`/`str`; call `reveal()` at the moment of use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["MissingSecret", "Secret", "SecretStore"]

_ENV_NAME = re.compile(r"[^A-Z0-9_]")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
"""A Kubernetes Secret key (`[-._a-zA-Z0-9]+`), and never `.`, `..` or a path: a name from the
registry must not read a file outside the secrets directory."""
_RESERVED = re.compile(r"^(?:DATABASE_URL|KAFKA_BOOTSTRAP_SERVERS|LLM_WORKER_\w*|OTEL_\w*|PG\w*)$")
"""The worker's own settings (by their environment name): the database URL and the Kafka
password may sit in the environment or the secrets directory too, and a registry row naming
one must not send it to a provider as an API key."""


class Secret:
    __slots__ = ("_name", "_value")

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value

    @property
    def name(self) -> str:
        return self._name

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(name={self._name!r}, value='***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Secret) and other._name == self._name and other._value == self._value
        )

    def __hash__(self) -> int:
        return hash(self._name)


class MissingSecret(LookupError):
    """No file and no environment variable holds the named secret."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(f"secret {name!r} not found ({where})")
        self.name = name


class SecretStore:
    """Looks secrets up by name; files win over the environment; a changed file is re-read."""

    def __init__(self, directory: str | os.PathLike[str] | None, env: dict[str, str] | None = None):
        self._dir = Path(directory) if directory else None
        self._env = env if env is not None else dict(os.environ)
        self._cache: dict[str, tuple[float, Secret]] = {}

    def get(self, name: str) -> Secret:
        if not _SECRET_NAME.match(name) or name in (".", ".."):
            raise MissingSecret(name, "not a valid secret name: letters, digits, '_', '-', '.'")
        env_name = _ENV_NAME.sub("_", name.upper())
        if _RESERVED.match(env_name):
            raise MissingSecret(name, "reserved: a setting of the worker itself, not an API key")
        if self._dir is not None:
            path = self._dir / name
            try:
                mtime = path.stat().st_mtime
            except OSError:
                pass
            else:
                cached = self._cache.get(name)
                if cached is not None and cached[0] == mtime:
                    return cached[1]
                secret = Secret(name, path.read_text(encoding="utf-8").strip())
                self._cache[name] = (mtime, secret)
                return secret
        value = self._env.get(env_name)
        if value is not None:
            return Secret(name, value)
        where = f"no file in {self._dir} and no ${env_name}" if self._dir else f"no ${env_name}"
        raise MissingSecret(name, where)
