"""Every metric the worker exports is in the metrics table of docs/operations.md and in the
README's summary of it, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.core import Metric

from llm_worker.worker.app import App
from llm_worker.worker.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"


def _documented() -> set[str]:
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
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


def _summarized() -> set[str]:
    """The README's table names the metrics without their `llm_worker_` prefix and labels."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| about | metrics |") :].split("\n\n", 1)[0]
    return {f"llm_worker_{name}" for name in re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", table)}


def _exported_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def test_the_readme_documents_every_exported_metric() -> None:
    app = App(load_settings({}), http=False)
    exported = {_exported_name(f) for f in app.metrics.registry.collect()}
    documented = _documented()
    assert not exported - documented, "exported but not in the table of docs/operations.md"
    assert not {d for d in documented if d.startswith("llm_worker_")} - exported, (
        "in the table of docs/operations.md but not exported"
    )


def test_the_readme_names_every_metric_of_the_worker() -> None:
    app = App(load_settings({}), http=False)
    exported = {_exported_name(f) for f in app.metrics.registry.collect()}
    ours = {name for name in exported if name.startswith("llm_worker_")}
    summarized = _summarized()
    assert not ours - summarized, "exported but not in the README's summary"
    assert not summarized - ours, "in the README's summary but not exported"
