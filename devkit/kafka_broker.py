"""A real Apache Kafka broker for the local stack: one KRaft node, broker and controller in one.

The jars come from `KAFKA_HOME` or from a per-version cache filled once with Maven, and the
JVM is Java 17+ (`kafka_jars.py`); a missing Java, Maven or jar is a `KafkaBrokerError` naming
what to install.

The broker lives in a temp directory: its configuration, its log (`server.log`) and its data.
Storage is formatted on the first `start()` (a random cluster id, `--standalone`: this node is
the whole controller quorum). `stop()` ends the process and keeps the data, `start()` again
brings it back on the same ports with the records it had (`restart()` does both; `kill()` is a
crash: SIGKILL, no clean shutdown). `close()` stops and deletes the directory; it also runs at
interpreter exit for a broker still running, so no Java process outlives its owner's normal
exit. Sizing is for a shared 2-core test machine: a 512 MB heap, and the threads and
replication of `kafka_config.SERVER_SETTINGS`.

A node can also be one of several (`kafka_cluster.py`): `node_id`, a shared `cluster_id` and
the static controller quorum `voters` (`1@host:port,2@host:port,...`, then storage is formatted
without `--standalone`), and its client listener can be SASL_SSL with SCRAM-SHA-512 users
(`SaslSsl`; inter-broker and controller traffic stay PLAINTEXT on loopback ports of their own).
What the node's files say is `kafka_config.py`; this module runs the process.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from llm_worker.devkit.kafka_config import (
    LOG4J2,
    SERVER_SETTINGS,
    SaslSsl,
    format_arguments,
    new_cluster_id,
    server_properties,
)
from llm_worker.devkit.kafka_jars import KAFKA_VERSION, KafkaBrokerError, find_java, kafka_libs

__all__ = [
    "KAFKA_VERSION",
    "SERVER_SETTINGS",
    "KafkaBroker",
    "KafkaBrokerError",
    "SaslSsl",
    "find_java",
    "free_port",
    "kafka_libs",
    "new_cluster_id",
]

log = logging.getLogger("llm_worker.devstack")

STOP_GRACE_S = 30.0
"""How long a clean shutdown may take before the process group is killed (it takes 2-5 s)."""

BIND_RETRIES = 3
BIND_RETRY_S = 5.0
"""A node started again on its ports right after a SIGKILL can find one still taken (once in
CI: `BindException: Address already in use`); it is started again this many times, this far
apart, before the error stands."""

HEAP_MB = 512
"""The broker's default maximum heap (`-Xmx`); it starts at half of it."""

JVM_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-Djava.awt.headless=true",
)
"""Kafka's own G1 settings (`kafka-run-class.sh`); the heap is `heap_mb`, sized for a test
machine."""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class KafkaBroker:
    """One Apache Kafka 4.x node (KRaft broker + controller) in a child process.

    `port` is the client listener (a free one when None); the controller gets another
    (`controller_port`), and with `sasl_ssl` the inter-broker PLAINTEXT listener a third. The
    constructor does no I/O; `start()` finds Java and the jars, formats storage the first time
    and returns once a metadata request lists this node (`start(wait=False)` returns at once:
    a node of a cluster can only come up with a quorum of its peers; `wait_ready()` then).
    """

    kind = "kafka"

    def __init__(
        self,
        port: int | None = None,
        *,
        version: str = KAFKA_VERSION,
        kafka_home: str | None = None,
        settings: dict[str, str] | None = None,
        node_id: int = 1,
        cluster_id: str | None = None,
        controller_port: int | None = None,
        voters: str | None = None,
        heap_mb: int = HEAP_MB,
        sasl_ssl: SaslSsl | None = None,
    ) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.version = version
        self.node_id = node_id
        self.cluster_id = cluster_id or new_cluster_id()
        self.controller_port = controller_port or free_port()
        self._voters = voters
        self._heap_mb = heap_mb
        self._sasl_ssl = sasl_ssl
        self._internal_port = free_port() if sasl_ssl else self.port
        self._kafka_home = kafka_home
        self._settings = {**SERVER_SETTINGS, **(settings or {})}
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._java = ""
        self._classpath = ""

    @property
    def log_path(self) -> Path | None:
        """The broker's own log (WARN and up, plus start-up and group coordinator lines)."""
        return self._dir / "server.log" if self._dir else None

    @property
    def data_dir(self) -> Path | None:
        return self._dir / "data" if self._dir else None

    def start(self, timeout: float = 90.0, *, wait: bool = True) -> KafkaBroker:
        if self._proc is not None and self._proc.poll() is None:
            return self
        if not self._classpath:
            self._java = find_java()
            libs = kafka_libs(self.version, self._kafka_home)
            self._classpath = str(libs / "*")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="llm-worker-kafka-"))
            self._write_config()
            self._format()
            atexit.register(self.close)
        for attempt in range(BIND_RETRIES + 1):
            self._launch()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except KafkaBrokerError as exc:
                if attempt == BIND_RETRIES or "Address already in use" not in str(exc):
                    raise
                log.warning(
                    "Kafka broker: a port of %s is still taken (a node just killed on it?); "
                    "starting again in %.0f s",
                    self.bootstrap,
                    BIND_RETRY_S,
                )
                time.sleep(BIND_RETRY_S)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _launch(self) -> None:
        assert self._dir is not None
        out = (self._dir / "stdout.log").open("ab")
        self._proc = subprocess.Popen(
            [*self._jvm(), "kafka.Kafka", str(self._dir / "server.properties")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends all of it
        )
        out.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Return once a metadata request to this node lists it; a node that exits or does not
        answer in time is stopped and a `KafkaBrokerError` raised, with its log's tail."""
        try:
            self._wait_ready(timeout)
        except KafkaBrokerError:
            self.stop()
            raise
        log.info("Apache Kafka %s broker listening on %s", self.version, self.bootstrap)

    @property
    def pid(self) -> int | None:
        """The running JVM's process id (None when stopped or killed)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """A clean shutdown (SIGTERM, then SIGKILL of the group after `timeout`); data kept."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Kafka broker did not stop within %.0f s: killing it", timeout)
        _signal_group(proc, signal.SIGKILL)  # anything left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def kill(self) -> None:
        """A crash: SIGKILL, no clean shutdown; the data directory stays for `start()`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def pause(self) -> None:
        """Freeze the node (SIGSTOP), as a long GC pause or a frozen VM would: its sockets
        stay open, it answers nothing. `resume()` (SIGCONT) lets it go on where it was."""
        if self._proc is not None:
            _signal_group(self._proc, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            _signal_group(self._proc, signal.SIGCONT)

    def restart(self, timeout: float = 90.0, *, wait: bool = True) -> KafkaBroker:
        self.stop()
        return self.start(timeout, wait=wait)

    def close(self) -> None:
        """Stop the broker and delete its directory (idempotent)."""
        self.stop()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            atexit.unregister(self.close)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _jvm(self) -> list[str]:
        assert self._dir is not None
        return [
            self._java,
            f"-Xms{self._heap_mb // 2}m",
            f"-Xmx{self._heap_mb}m",
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self._dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self._dir}",
            "-cp",
            self._classpath,
        ]

    def _write_config(self) -> None:
        assert self._dir is not None
        props = server_properties(
            node_id=self.node_id,
            port=self.port,
            internal_port=self._internal_port,
            controller_port=self.controller_port,
            voters=self._voters,
            log_dirs=self._dir / "data",
            sasl_ssl=self._sasl_ssl,
        )
        text = "".join(f"{k}={v}\n" for k, v in {**props, **self._settings}.items())
        path = self._dir / "server.properties"
        path.touch(mode=0o600)  # it may hold the keystore password
        path.write_text(text, encoding="utf-8")
        log4j = LOG4J2.format(log=self._dir / "server.log")
        (self._dir / "log4j2.properties").write_text(log4j, encoding="utf-8")

    def _format(self) -> None:
        assert self._dir is not None
        cmd = [
            *self._jvm(),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.cluster_id,
            "--config",
            str(self._dir / "server.properties"),
        ]
        cmd += format_arguments(self._voters, self._sasl_ssl)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise KafkaBrokerError(
                f"formatting Kafka storage failed (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}"
            )

    def _wait_ready(self, timeout: float) -> None:
        # the PLAINTEXT listener: with SASL_SSL the client port needs credentials
        probe = f"127.0.0.1:{self._internal_port}"
        admin = AdminClient({"bootstrap.servers": probe, "log_level": 0})
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise KafkaBrokerError(
                    f"the Kafka broker exited with {code} while starting; see {self.log_path} "
                    f"and {self._dir}/stdout.log:\n{self._tail()}"
                )
            try:
                if self.node_id in admin.list_topics(timeout=1.0).brokers:
                    return
            except KafkaException:
                pass
            if time.monotonic() > deadline:
                raise KafkaBrokerError(
                    f"the Kafka broker did not answer on {self.bootstrap} within "
                    f"{timeout:.0f} s; see {self.log_path}:\n{self._tail()}"
                )
            time.sleep(0.2)

    def _tail(self) -> str:
        lines: list[str] = []
        for name in ("stdout.log", "server.log"):
            path = self._dir / name if self._dir else None
            if path is not None and path.exists():
                lines += path.read_text(errors="replace").splitlines()[-10:]
        return "\n".join(lines)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
