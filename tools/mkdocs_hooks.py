"""MkDocs hooks (mkdocs.yml `hooks:`). The site's home page is README.md itself: docs/index.md
only points at it on GitHub, and the build reads the README in its place, so the two cannot
drift. The README's links are written from the repository root (`docs/routing.md`); on the site
they are rewritten from docs/ (`routing.md`). A docs page links to the README as `../README.md`,
which becomes the home page. Any other link out of docs/ is left as it is, and the strict
build fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
_RELATIVE_LINK = re.compile(r"\]\((?![a-z]+:|#)([^)\s]+)\)")
_README_LINK = re.compile(r"\]\(\.\./README\.md")


def _from_docs(target: str) -> str:
    return target.removeprefix("docs/")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "index.md":
        readme = (_ROOT / "README.md").read_text(encoding="utf-8")
        return _RELATIVE_LINK.sub(lambda m: f"]({_from_docs(m.group(1))})", readme)
    return _README_LINK.sub("](index.md", markdown)
