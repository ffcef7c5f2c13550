"""The chart's README.md stays true to the chart: it names every top-level value, its links
lead to files, and the commands it and NOTES.txt show parse with the real command line."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from .render import CHART

README = CHART / "README.md"
NOTES = CHART / "templates" / "NOTES.txt"


def test_the_readme_names_every_top_level_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = README.read_text()
    glance = text[text.index("## Values at a glance") :]
    missing = [key for key in values if f"`{key}`" not in glance]
    assert not missing, f"helm/llm-worker/README.md's values table misses {missing}"


def test_the_readme_links_lead_to_files() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (README.parent / target).resolve().exists(), target


def _commands(text: str) -> list[list[str]]:
    """The `llm-worker send|registry` command lines of a text's examples (lines that start with
    the command, or with the `kubectl exec` that runs it; continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        found = re.search(r"llm-worker (registry|send) .*", line)
        if found and line.strip().startswith(("kubectl", "llm-worker", "{{ $exec }}")):
            cmd = re.sub(r"\{\{[^}]*\}\}", "chat-small", found.group(0))  # a template's id
            out.append(shlex.split(cmd.rstrip("`"))[1:])
    return out


@pytest.mark.parametrize("doc", [README, NOTES], ids=lambda p: p.name)
def test_the_commands_shown_parse(doc: Path) -> None:
    main = importlib.import_module("llm_worker.worker.cli.main")
    parser = main.build_parser()
    commands = _commands(doc.read_text())
    assert any(c[:2] == ["registry", "add"] for c in commands), "no `registry add` shown"
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc.name}: `llm-worker {shlex.join(argv)}` does not parse")
        assert isinstance(args, argparse.Namespace)
