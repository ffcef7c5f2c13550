"""constraints.txt: the exact version of every package the worker needs at run time.

pyproject.toml gives lower bounds; this file pins what they resolved to, so the image and CI
install the same versions until someone regenerates it on purpose. The pins are the versions
installed in this environment (the dev venv), for the runtime closure of the project with the
extras the image installs: `[project] dependencies` plus `grpc`, followed through each
package's own requirements (markers evaluated for this interpreter and platform).

    make constraints                                  # rewrite constraints.txt from .venv
    .venv/bin/python tools/constraints.py --check     # exit 1 if it is not what .venv holds

To move a pin: upgrade the package in .venv (`.venv/bin/pip install -U NAME`), run
`make constraints`, and commit both. tests/unit/test_constraints.py checks that every
dependency of pyproject.toml is pinned within its bounds and that the file is current.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"
EXTRAS = ("grpc",)
"""The extras the image installs (Dockerfile: `pip install -c constraints.txt ".[grpc]"`)."""

HEADER = """\
# The exact version of every runtime dependency of llm-worker[grpc], for
# `pip install -c constraints.txt` (the Dockerfile and the Makefile's venv). Generated from
# pyproject.toml and the versions installed in .venv by `make constraints` (tools/constraints.py);
# do not edit by hand.
"""


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def roots(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The project's own requirements: its dependencies and those of `EXTRAS`."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    raw = list(project["dependencies"])
    for extra in EXTRAS:
        raw += project["optional-dependencies"][extra]
    return [Requirement(r) for r in raw]


def pins(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """{canonical name: installed version} over the runtime closure. SystemExit naming the
    package if one is missing or installed outside a bound that asks for it."""
    out: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, "pyproject.toml") for r in roots(pyproject) if _applies(r, frozenset())]
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} (needed by {wanted_by}) is not installed") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{name} {dist.version} is installed; {wanted_by} wants {req}")
        out[name] = dist.version
        extras = frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in dist.requires or []:
            sub = Requirement(line)
            if _applies(sub, extras):
                todo.append((sub, f"{name} {dist.version}"))
    return out


def render(found: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={found[name]}\n" for name in sorted(found))


def main(argv: list[str]) -> int:
    text = render(pins())
    if argv == ["--check"]:
        if CONSTRAINTS.read_text(encoding="utf-8") != text:
            print(
                "constraints.txt is not what .venv holds: run `make constraints` (or rebuild the "
                "venv from it: rm .venv/.installed && make unit)",
                file=sys.stderr,
            )
            return 1
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    CONSTRAINTS.write_text(text, encoding="utf-8")
    print(f"wrote {CONSTRAINTS.name}: {text.count('==')} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
