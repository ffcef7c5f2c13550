"""The docs say what the tree holds: the README's code map names every module and no module that
is gone, every repository path and module the docs name in backticks exists, their links lead
somewhere, and the site's nav holds every page (`make docs` builds the site strictly; this
checks the same without MkDocs installed). The metrics tables: tests/unit/test_metrics_doc.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PACKAGES = ("worker", "adapters", "registry", "devkit")  # the service and its devkit
# Top-level folders whose paths the docs may name; a path under one of them must exist.
TREE_FOLDERS = (*PACKAGES, "tests", "docs", "tools", "helm", "migrations", "schemas", ".ci")

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_GLOB_OR_PLACEHOLDER = re.compile(r"[<>*{}\[\]$ ]|\.\.\.")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }


def _code_map_names() -> tuple[set[str], set[str]]:
    """The modules the code map names, and the names that are no file of the tree.

    The map names a folder (`worker/stream/`), then files in it (`flow.py`); a path with a
    slash is read from the repository root, else from the folder last named, else from
    `worker/`.
    """
    folder = ""
    named: set[str] = set()
    missing: set[str] = set()
    for token in _CODE_SPAN.findall(_section(README.read_text(encoding="utf-8"), "Code map")):
        if token.endswith("/") and token.startswith(PACKAGES):
            folder = token
            continue
        if not token.endswith(".py") or _GLOB_OR_PLACEHOLDER.search(token):
            continue
        readings = [token, folder + token, "worker/" + token]
        found = next((r for r in readings if (ROOT / r).is_file()), None)
        if found is None:
            missing.add(token if "/" in token else folder + token)
        elif found.startswith(PACKAGES):
            named.add(found)
    return named, missing


def test_the_code_map_names_every_module() -> None:
    named, _ = _code_map_names()
    unnamed = sorted(_modules() - named)
    assert not unnamed, f"README.md's code map does not name {unnamed}"


def test_the_code_map_names_no_module_that_is_gone() -> None:
    _, missing = _code_map_names()
    assert not missing, f"README.md's code map names modules that do not exist: {sorted(missing)}"


def _named_paths(text: str) -> set[str]:
    paths = set()
    for token in _CODE_SPAN.findall(text):
        token = token.removeprefix("../")
        if token.startswith(tuple(f"{f}/" for f in TREE_FOLDERS)) and not (
            _GLOB_OR_PLACEHOLDER.search(token) or "=" in token
        ):
            paths.add(token.split("::")[0].rstrip(":,."))
    return paths


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.name)
def test_every_path_the_docs_name_exists(doc: Path) -> None:
    gone = sorted(
        p for p in _named_paths(doc.read_text(encoding="utf-8")) if not (ROOT / p).exists()
    )
    assert not gone, f"{doc.relative_to(ROOT)} names paths that do not exist: {gone}"


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.name)
def test_every_module_the_docs_name_by_import_path_exists(doc: Path) -> None:
    """`adapters.fake_server` once named a module that had moved to worker/cli/."""
    dotted = re.compile(r"^(?:llm_worker\.)?(worker|adapters|registry|devkit)\.([a-z_]+)")
    gone = set()
    for token in _CODE_SPAN.findall(doc.read_text(encoding="utf-8")):
        match = dotted.match(token)
        if match and not token.endswith(".py"):
            package, name = match.groups()
            if not ((ROOT / package / f"{name}.py").is_file() or (ROOT / package / name).is_dir()):
                gone.add(token)
    assert not gone, f"{doc.relative_to(ROOT)} names modules that do not exist: {sorted(gone)}"


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:|#", target):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to files that do not exist: {broken}"


def _nav_pages(nav: list[object]) -> set[str]:
    pages: set[str] = set()
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            if isinstance(value, list):
                pages |= _nav_pages(value)
            elif isinstance(value, str):
                pages.add(value)
    return pages


def test_the_site_nav_holds_every_page_and_only_pages_that_exist() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    pages = {p.name for p in DOCS.glob("*.md")}
    assert nav == pages, f"in the nav only: {sorted(nav - pages)}; not in it: {sorted(pages - nav)}"
