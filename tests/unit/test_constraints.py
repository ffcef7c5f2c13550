"""constraints.txt, the lock the image and CI install from: it pins every runtime dependency of
pyproject.toml within that dependency's bounds, and it is what `make constraints` makes of
this environment, so neither file can move without the other."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            out[canonicalize_name(name)] = version
    return out


def test_every_runtime_dependency_is_pinned_within_its_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["grpc"]
    pins = _pins()
    for raw in wanted:
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} ({raw}) has no pin in constraints.txt: run make constraints"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {raw}"
        )
        for extra in req.extras:  # psycopg[binary,pool]: the extras' packages too
            assert any(p.startswith(f"{name}-{extra}") for p in pins), f"{name}[{extra}]"


def test_the_file_is_what_make_constraints_makes_of_this_environment() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "constraints.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
