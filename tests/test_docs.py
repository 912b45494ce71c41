"""Every `docs/<page>.md` and `docs/<page>.md#<section>` cited from code, tests, benchmarks and READMEs
exists, and nothing cites the design note that is not part of the repository.

Sections are matched against the page's headings as a Markdown renderer anchors them (GitHub's rule:
lower case, punctuation other than `-` and `_` dropped, spaces become `-`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CITE = re.compile(r"docs/([A-Za-z0-9_-]+\.md)(?:#([A-Za-z0-9_-]+))?")
OUTSIDE = "DESIGN" + ".md"  # spelled apart so this file does not cite it


def _sources() -> list[Path]:
    files = [p for d in ("nexus", "tests", "bench", "deploy") for p in (ROOT / d).rglob("*") if p.is_file()]
    files += [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "examples").rglob("*.toml")]
    return sorted(p for p in files if p.suffix in {".py", ".md", ".toml", ".yaml", ".yml", ".conf"})


def anchors(markdown: str) -> set[str]:
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if m:
            text = re.sub(r"[`*]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return out


def _citations() -> list[tuple[str, str, str | None]]:
    found = []
    for path in _sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [(str(path.relative_to(ROOT)), m.group(1), m.group(2)) for m in CITE.finditer(text)]
    # links inside docs/ itself are relative ("state.md#keys")
    for page in DOCS.glob("*.md"):
        for m in re.finditer(r"\]\(([A-Za-z0-9_-]+\.md)(?:#([A-Za-z0-9_-]+))?\)", page.read_text()):
            found.append((f"docs/{page.name}", m.group(1), m.group(2)))
    return found


def test_anchor_rule() -> None:
    assert anchors("## The 503 body\n### Retry-After\n# `{config}`: desired state\n") == {
        "the-503-body",
        "retry-after",
        "config-desired-state",
    }


def test_the_three_pages_exist_and_are_cited() -> None:
    cited = {page for _, page, _ in _citations()}
    assert {"architecture.md", "http-contract.md", "state.md"} <= cited


@pytest.mark.parametrize(("where", "page", "section"), _citations(), ids=lambda v: str(v))
def test_cited_page_and_section_exist(where: str, page: str, section: str | None) -> None:
    target = DOCS / page
    assert target.is_file(), f"{where} cites docs/{page}, which does not exist"
    if section is not None:
        assert section in anchors(target.read_text()), f"{where} cites docs/{page}#{section}: no such section"


def test_nothing_cites_the_outside_design_note() -> None:
    citing = [str(p.relative_to(ROOT)) for p in _sources() if OUTSIDE in p.read_text(errors="replace")]
    assert citing == []
