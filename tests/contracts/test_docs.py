"""The user docs hold together: every link resolves inside the repository, no diary phrasing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # web addresses and anchors on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists() or ROOT not in path.parents:
            broken.append(target)
    assert not broken, f"{page.name}: links that do not resolve inside the repository: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_narrates_earlier_defaults(page):
    # history belongs in CHANGELOG.md; dated result pages say when they were measured
    found = re.findall(r"the default before|until 2026|[Mm]easured before", page.read_text())
    assert not found, f"{page.name} narrates history ({found}); move it to CHANGELOG.md"


def test_code_cites_no_file_outside_the_repository():
    outside = re.compile(r"PROTOTYPE_FINDINGS|ALGORITHMS\.md|PEERS\.md|REVIEW-20|shared/design")
    hits = [
        str(path.relative_to(ROOT))
        for folder in ("cloud", "device", "protocol", "simulations")
        for path in (ROOT / folder).rglob("*.py")
        if outside.search(path.read_text())
    ]
    assert not hits, f"these files cite design notes that are not in the repository: {hits}"
