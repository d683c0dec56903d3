"""The documentation's links between pages land on headings that exist."""

import re

from tests.conftest import ROOT


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_heading_names_one_that_exists():
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    anchors = {p.name: {_slug(line.lstrip("#")) for line in p.read_text().splitlines() if line.startswith("#")}
               for p in pages}
    broken = [(p.name, m.group(1), m.group(2)) for p in pages
              for m in re.finditer(r"\]\((?:docs/)?([\w.-]+\.md)#([^)]+)\)", p.read_text())
              if m.group(2) not in anchors.get(m.group(1), set())]
    assert not broken, broken
