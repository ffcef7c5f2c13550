"""Fixtures for the chart tests.

`HELM_BIN` names the helm binary (`make helm-check` builds one with `tools/helm.sh` and sets
it). Without it the chart tests are skipped, except in CI (`CI` set), where that is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

from .render import Helm


@pytest.fixture(scope="session")
def helm_bin() -> str:
    path = os.environ.get("HELM_BIN", "")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("HELM_BIN is not set in CI: run `make helm-check` (builds helm with Go)")
        pytest.skip("HELM_BIN is not set: run `make helm-check`, or HELM_BIN=$(tools/helm.sh)")
    resolved = shutil.which(path)
    if resolved is None:
        pytest.fail(f"HELM_BIN={path!r} is not an executable")
    return resolved


@pytest.fixture(scope="session")
def helm(helm_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_bin, tmp_path_factory.mktemp("helm"))
