"""Where the Apache Kafka broker's jars and Java come from (`kafka_broker.py` runs them).

`kafka_home` (or `KAFKA_HOME`: an unpacked Apache Kafka distribution) gives `libs/`; else the
per-version cache `${XDG_CACHE_HOME:-~/.cache}/llm-worker/kafka-<version>/libs`, filled once by
`mvn dependency:copy-dependencies` on the pom shipped in `devkit/kafka/pom.xml` (into a
staging directory renamed when complete, so a failed or concurrent fetch never leaves half a
cache) and reused offline afterwards. Java is `JAVA_HOME`'s, else `java` on the PATH, 17+.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["JAVA_MIN", "KAFKA_VERSION", "KafkaBrokerError", "find_java", "kafka_libs"]

log = logging.getLogger("llm_worker.devstack")

KAFKA_VERSION = "4.4.0"
"""The newest `org.apache.kafka:kafka_2.13` that resolves with its runtime dependencies here."""

JAVA_MIN = 17
"""Apache Kafka 4.x brokers need Java 17 or later."""


class KafkaBrokerError(RuntimeError):
    """The broker cannot be started: no Java 17+, no jars (and no Maven), or it did not come up."""


def find_java() -> str:
    """The `java` to run the broker with (JAVA_HOME first), checked to be 17 or later."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home, "bin", "java")) if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaBrokerError(
            f"Apache Kafka needs Java {JAVA_MIN}+ and none was found (JAVA_HOME or java on the "
            "PATH): install a JDK, e.g. `apt-get install openjdk-17-jre-headless`"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaBrokerError(f"cannot run {java} -version: {exc}") from exc
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_392" is Java 8
        major = int(found.group(2))
    if major < JAVA_MIN:
        raise KafkaBrokerError(
            f"Apache Kafka 4 needs Java {JAVA_MIN}+, {java} is {major or 'unknown'}: install a "
            "newer JDK (e.g. `apt-get install openjdk-17-jre-headless`) or point JAVA_HOME at one"
        )
    return java


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-worker"


def kafka_libs(version: str = KAFKA_VERSION, kafka_home: str | None = None) -> Path:
    """The directory of broker jars: `<KAFKA_HOME>/libs`, else the per-version cache (filled by
    Maven on first use)."""
    home = kafka_home if kafka_home is not None else os.environ.get("KAFKA_HOME")
    if home:
        libs = Path(home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise KafkaBrokerError(
                f"KAFKA_HOME={home} is not an unpacked Apache Kafka distribution "
                "(no libs/kafka_2.13-*.jar); unset it to fetch the jars with Maven instead"
            )
        return libs
    libs = _cache_root() / f"kafka-{version}" / "libs"
    if (libs / ".complete").exists():
        return libs
    return _fetch_jars(version, libs)


def _fetch_jars(version: str, libs: Path) -> Path:
    mvn = shutil.which("mvn")
    pom = resources.files("llm_worker.devkit").joinpath("kafka", "pom.xml")
    if mvn is None:
        raise KafkaBrokerError(
            f"no Apache Kafka jars in {libs} and no Maven to fetch them: install Maven "
            "(e.g. `apt-get install maven`), or set KAFKA_HOME to an unpacked Apache Kafka "
            f"{version.split('.')[0]}.x distribution"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    log.info("fetching Apache Kafka %s jars with Maven into %s (once)", version, libs)
    with resources.as_file(pom) as pom_path:
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom_path),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={staging}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise KafkaBrokerError(
            f"fetching Apache Kafka {version} with Maven failed (exit {done.returncode}): "
            f"{' '.join(cmd)}\n{tail}"
        )
    (staging / ".complete").touch()
    try:
        staging.rename(libs)
    except OSError:  # another process got there first: use its copy
        shutil.rmtree(staging, ignore_errors=True)
        if not (libs / ".complete").exists():
            raise
    return libs
