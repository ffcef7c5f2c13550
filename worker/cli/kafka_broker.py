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
exit. Sizing is for a shared 2-core test machine: a 512 MB heap, two network and two I/O
threads, replication factor 1 for every internal topic, no initial rebalance delay, and the
KIP-848 group timeouts lowered so consumer-protocol groups settle in seconds.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from .kafka_jars import KAFKA_VERSION, KafkaBrokerError, find_java, kafka_libs

__all__ = ["KAFKA_VERSION", "KafkaBroker", "KafkaBrokerError", "find_java", "kafka_libs"]

log = logging.getLogger("llm_worker.devstack")

STOP_GRACE_S = 30.0
"""How long a clean shutdown may take before the process group is killed (it takes 2-5 s)."""

JVM_OPTS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-Djava.awt.headless=true",
)
"""Kafka's own G1 settings (`kafka-run-class.sh`) with a heap that suits a test machine."""

SERVER_SETTINGS: dict[str, str] = {
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "num.partitions": "1",
    "auto.create.topics.enable": "false",  # the worker and the tests create their topics
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "8",  # created on the first group join: keep it quick
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "4",
    "group.initial.rebalance.delay.ms": "0",
    # KIP-848 (`group.protocol=consumer`) groups: the broker owns the timeouts; the defaults
    # (45 s session, 5 s heartbeat) make a test wait that long for a departed member.
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.session.timeout.ms": "10000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.consumer.heartbeat.interval.ms": "1000",
    "log.segment.bytes": str(64 * 1024 * 1024),
}
"""Broker settings for one node on a shared 2-core machine (see the module docstring)."""

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
logger.groups.name = org.apache.kafka.coordinator.group
logger.groups.level = INFO
"""


def _cluster_id() -> str:
    """A random cluster id as Kafka writes one (URL-safe base64 of 16 bytes), never starting
    with `-`: the storage tool would read such an id as an option (1 start in 64), as Kafka's
    own `Uuid.randomUuid()` avoids too."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class KafkaBroker:
    """One Apache Kafka 4.x node (KRaft broker + controller) in a child process.

    `port` is the client listener (a free one when None); the controller gets another. The
    constructor does no I/O; `start()` finds Java and the jars, formats storage the first time
    and returns once a metadata request lists the broker.
    """

    kind = "kafka"

    def __init__(
        self,
        port: int | None = None,
        *,
        version: str = KAFKA_VERSION,
        kafka_home: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.port = port or _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.version = version
        self._kafka_home = kafka_home
        self._settings = {**SERVER_SETTINGS, **(settings or {})}
        self._controller_port: int | None = None
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

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        if self._proc is not None and self._proc.poll() is None:
            return self
        if not self._classpath:
            self._java = find_java()
            libs = kafka_libs(self.version, self._kafka_home)
            self._classpath = str(libs / "*")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="llm-worker-kafka-"))
            self._controller_port = _free_port()
            self._write_config()
            self._format()
            atexit.register(self.close)
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
        try:
            self._wait_ready(timeout)
        except KafkaBrokerError:
            self.stop()
            raise
        log.info("Apache Kafka %s broker listening on %s", self.version, self.bootstrap)
        return self

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

    def restart(self, timeout: float = 90.0) -> KafkaBroker:
        self.stop()
        return self.start(timeout)

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
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self._dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self._dir}",
            "-cp",
            self._classpath,
        ]

    def _write_config(self) -> None:
        assert self._dir is not None
        host, cport = "127.0.0.1", self._controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"{host}:{cport}",
            "log.dirs": str(self._dir / "data"),
            **self._settings,
        }
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        (self._dir / "server.properties").write_text(text, encoding="utf-8")
        log4j = _LOG4J2.format(log=self._dir / "server.log")
        (self._dir / "log4j2.properties").write_text(log4j, encoding="utf-8")

    def _format(self) -> None:
        assert self._dir is not None
        cmd = [
            *self._jvm(),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            _cluster_id(),
            "--config",
            str(self._dir / "server.properties"),
            "--standalone",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise KafkaBrokerError(
                f"formatting Kafka storage failed (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}"
            )

    def _wait_ready(self, timeout: float) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
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
                if admin.list_topics(timeout=1.0).brokers:
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
