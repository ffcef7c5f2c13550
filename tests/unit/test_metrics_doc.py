"""Every metric the worker exports is in the README's metrics table, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.core import Metric

from worker.app import App
from worker.config import load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _documented() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        for name in re.findall(r"`([a-z_]+)`", cell):
            names.add(name)
        # `llm_worker_dedup_entries` / `_bytes`: the second shares the first's prefix
        first = re.findall(r"`([a-z_]+)`", cell)[0]
        for suffix in re.findall(r"`(_[a-z_]+)`", cell):
            names.add(first.rsplit("_", 1)[0] + suffix)
    return names


def _exported_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def test_the_readme_documents_every_exported_metric() -> None:
    app = App(load_settings({}), http=False)
    exported = {_exported_name(f) for f in app.metrics.registry.collect()}
    documented = _documented()
    assert not exported - documented, "exported but not in the README's table"
    assert not {d for d in documented if d.startswith("llm_worker_")} - exported, (
        "in the README's table but not exported"
    )
