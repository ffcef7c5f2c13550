"""Render the chart with a real `helm` binary and pick manifests out of the result."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "llm-worker"
RELEASE = "llmw"
NAMESPACE = "llm"
FULLNAME = "llmw-llm-worker"
DB_URL = "postgresql://llm_worker:pw@postgresql:5432/llm_worker"
MINIMAL: dict[str, Any] = {"database": {"url": DB_URL}}

Manifest = dict[str, Any]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def merge(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of values dicts (later wins), like helm's -f a.yaml -f b.yaml."""
    out = dict(base)
    for extra in overrides:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


class Helm:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self._workdir = workdir
        self._n = 0

    def _values_file(self, values: dict[str, Any]) -> Path:
        self._n += 1
        path = self._workdir / f"values-{self._n}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return path

    def run(self, *args: str | Path) -> Result:
        proc = subprocess.run(
            [self.binary, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "HELM_CACHE_HOME": str(self._workdir / "cache")},
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def template(
        self,
        values: dict[str, Any] | None = None,
        *,
        files: Iterable[Path] = (),
        chart: Path = CHART,
    ) -> Result:
        args: list[str | Path] = ["template", RELEASE, chart, "--namespace", NAMESPACE]
        for f in files:
            args += ["-f", f]
        if values is not None:
            args += ["-f", self._values_file(values)]
        return self.run(*args)

    def lint(self, values: dict[str, Any] | None = None, *, files: Iterable[Path] = ()) -> Result:
        args: list[str | Path] = ["lint", "--strict", CHART]
        for f in files:
            args += ["-f", f]
        if values is not None:
            args += ["-f", self._values_file(values)]
        return self.run(*args)

    def render(
        self,
        values: dict[str, Any] | None = None,
        *,
        files: Iterable[Path] = (),
        chart: Path = CHART,
    ) -> list[Manifest]:
        """Manifests of `helm template` (MINIMAL, then `values`); fails the test on error."""
        res = self.template(merge(MINIMAL, values or {}), files=files, chart=chart)
        assert res.returncode == 0, f"helm template failed:\n{res.stderr}"
        return [d for d in yaml.safe_load_all(res.stdout) if d]

    def render_error(self, values: dict[str, Any], *, with_minimal: bool = True) -> str:
        """stderr of a `helm template` that must fail."""
        res = self.template(merge(MINIMAL, values) if with_minimal else values)
        assert res.returncode != 0, f"helm template accepted {values!r}:\n{res.stdout[:2000]}"
        return res.stderr


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def hook(d: Manifest) -> str | None:
    return (d["metadata"].get("annotations") or {}).get("helm.sh/hook")


def deployment(docs: list[Manifest]) -> Manifest:
    return one(docs, "Deployment")


def pod_spec(docs: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(docs)["spec"]["template"]["spec"]
    return spec


def container(docs: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    c: dict[str, Any] = containers[0]
    return c


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def config_data(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", FULLNAME)["data"]
    return data


def migration_job(docs: list[Manifest]) -> Manifest:
    return one(docs, "Job")
