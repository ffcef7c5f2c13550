"""The wheel, built as the image builds it: from the Docker build context alone (.dockerignore's
allow-list, symbolic links kept), by pip. It installs one top-level package, `llm_worker`, with
the service and its migrations, and nothing of the devkit (dev stack, fake provider, Maven pom,
benchmarks); its command line still names the devkit's commands and says where they live."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .render import REPO

# The service's command line, from the unpacked wheel only: the checkout's editable finder is
# taken off the import system, so nothing can come from the repository.
_FROM_THE_WHEEL = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv[1])
import llm_worker.worker
assert llm_worker.worker.__file__.startswith(sys.argv[1]), llm_worker.worker.__file__
from llm_worker.worker.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _context(dest: Path) -> Path:
    """What `docker build` sends: the allow-listed paths of .dockerignore, links as links."""
    dest.mkdir(parents=True)
    lines = (REPO / ".dockerignore").read_text().splitlines()
    for name in (ln[1:].rstrip("/") for ln in lines if ln.startswith("!")):
        src = REPO / name
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(
                src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    ctx = _context(root / "context")
    out = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ctx)],
        check=True,
        timeout=240,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (built,) = out.glob("llm_worker-*.whl")
    unpacked = root / "site"
    with zipfile.ZipFile(built) as z:
        z.extractall(unpacked)
    return unpacked


def test_the_wheel_installs_the_service_under_its_own_name(wheel: Path) -> None:
    files = {p.relative_to(wheel).as_posix() for p in wheel.rglob("*") if p.is_file()}
    top = {f.split("/")[0] for f in files if not f.startswith("llm_worker-")}
    assert top == {"llm_worker"}, top
    for needed in (
        "llm_worker/worker/pipeline.py",
        "llm_worker/worker/py.typed",
        "llm_worker/adapters/openai_compatible.py",
        "llm_worker/registry/cache.py",
        "llm_worker/worker/cli/main.py",
    ):
        assert needed in files
    assert any(f.startswith("llm_worker/migrations/") and f.endswith(".sql") for f in files)
    tools = sorted(f for f in files if "devkit" in f or f.endswith("pom.xml") or "bench" in f)
    assert not tools, tools
    (entry_points,) = wheel.glob("llm_worker-*.dist-info/entry_points.txt")
    assert "llm-worker = llm_worker.worker.cli:main" in entry_points.read_text()


def _cli(wheel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _FROM_THE_WHEEL, str(wheel), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=wheel,
    )


def test_a_devkit_command_from_the_wheel_says_where_it_lives(wheel: Path) -> None:
    done = _cli(wheel, "dev", "--demo")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "`llm-worker dev` is a tool of a checkout of the repository" in done.stderr
    assert "make demo" in done.stderr


def test_the_service_commands_run_from_the_wheel(wheel: Path) -> None:
    done = _cli(wheel, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("run", "migrate", "send", "registry", "bench"):
        assert command in done.stdout
    migrate = _cli(wheel, "migrate", "--help")
    assert migrate.returncode == 0, migrate.stderr
