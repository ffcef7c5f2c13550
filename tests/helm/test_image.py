"""The container image, checked by reading the Dockerfile (no Docker engine here; hadolint
runs in `make helm-check`), and its fit with the chart."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .render import CHART, REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_multi_stage_on_a_slim_python() -> None:
    stages = _stages()
    assert len(stages) == 2
    args = dict(a.split("=", 1) for i, a in _instructions() if i == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.(1[1-9])-slim(-\w+)?", base), base
    builder, runtime = stages
    # the package itself, from the source tree (with extras: ".[grpc]")
    assert any(
        i == "RUN" and "pip install" in a and re.search(r' "?\.(\[[a-z,]+\])?"?( |$)', a)
        for i, a in builder
    )
    copies = [a for i, a in runtime if i == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]  # only the venv


def test_runtime_stage_has_no_compilers_and_no_package_installs() -> None:
    runtime = _stages()[1]
    runs = " ".join(a for i, a in runtime if i == "RUN")
    for word in ("apt-get", "apk", "gcc", "build-essential", "pip install"):
        assert word not in runs


def test_runs_as_numeric_non_root_user() -> None:
    users = [a for i, a in _stages()[1] if i == "USER"]
    assert users and re.fullmatch(r"10001(:10001)?", users[-1])
    assert _values()["podSecurityContext"]["runAsUser"] == 10001


def test_exec_form_entrypoint_and_cmd() -> None:
    ins = dict(_stages()[1])
    assert json.loads(ins["ENTRYPOINT"]) == ["llm-worker"]
    assert json.loads(ins["CMD"]) == ["run"]


def test_environment_port_and_labels() -> None:
    runtime = _stages()[1]
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem
    assert ("EXPOSE", "8080") in runtime
    assert _values()["httpPort"] == 8080
    labels = " ".join(a for i, a in runtime if i == "LABEL")
    for key in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"  # everything out, then allow what the wheel needs
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "llm_worker",
        "worker",
        "adapters",
        "registry",
        "migrations",
    }
    copied = {
        src.rstrip("/")
        for i, a in _stages()[0]
        if i == "COPY" and not a.startswith("--")
        for src in a.split()[:-1]
    }
    assert copied == allowed  # every source the builder copies is in the context
    assert "**/__pycache__" in lines


def test_dependencies_are_installed_at_the_pinned_versions() -> None:
    """pyproject.toml gives lower bounds; the image installs every dependency at the version
    constraints.txt pins (tests/unit/test_constraints.py keeps that file complete and current)."""
    installs = [a for i, a in _stages()[0] if i == "RUN" and "pip install" in a]
    project = [a for a in installs if re.search(r' "?\.(\[[a-z,]+\])?"?( |$)', a)]
    assert project, installs
    for a in project:
        assert re.search(r"(-c|--constraint)[ =]constraints\.txt ", a), a
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert any(p.startswith("confluent-kafka==") for p in pins)
