"""Every docs/ page a comment or docstring cites exists, with the section it names.

Comments point at the page that states the behaviour they implement, as `docs/behaviour.md` or
`(docs/behaviour.md, "Names a client sees")`; a page renamed or a heading reworded must not leave
them pointing at nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Where product, test and build code lives (the links inside image_cri_shim/ are not followed, so
# each file is read once under its real folder).
FOLDERS = (
    "image_cri_shim",
    "workers",
    "supervisor",
    "syncer",
    "protos",
    "tests",
    "tools",
    "packaging",
    "systemd",
)
SUFFIXES = frozenset({".py", ".proto", ".sh", ".spec", ".service", ".toml"})
TOP_FILES = ("Makefile", "pyproject.toml")

# docs/<page>.md, then any number of quoted section titles: `, "Title"` (a title may wrap onto the
# next line of a comment, whose `#` is then not part of it).
CITATION = re.compile(r'docs/((?:[\w-]+/)*[\w-]+\.md)((?:,\s*(?:#\s*)?"[^"]+")*)')
TITLE = re.compile(r'"([^"]+)"')
HEADING = re.compile(r"#{1,6}\s+(.+?)\s*#*\s*")
FENCE = re.compile(r"\s*(```|~~~)")


@dataclass(frozen=True)
class Citation:
    where: str  # file:line
    page: str
    section: str | None

    def __str__(self) -> str:
        return f"{self.where}: docs/{self.page}" + (f', "{self.section}"' if self.section else "")


def sources(root: Path) -> list[Path]:
    """The code files that may cite a page."""
    found = [root / name for name in TOP_FILES if (root / name).is_file()]
    for folder in FOLDERS:
        for directory, subdirs, files in os.walk(root / folder):  # links to folders are not followed
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            found += [Path(directory, f) for f in sorted(files) if Path(f).suffix in SUFFIXES]
    return found


def citations(path: Path, text: str) -> list[Citation]:
    """Each page cited in `text`, once per quoted section title (or once with none)."""
    out = []
    for match in CITATION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        where = f"{path.relative_to(ROOT)}:{line}" if path.is_relative_to(ROOT) else f"{path}:{line}"
        titles = [unwrap(t) for t in TITLE.findall(match.group(2))]
        out += [Citation(where, match.group(1), t) for t in titles] or [Citation(where, match.group(1), None)]
    return out


def unwrap(title: str) -> str:
    """A title as written on one line: the line breaks of a wrapped comment become spaces."""
    return re.sub(r"\s*\n\s*(?:#\s*)?", " ", title).strip()


def headings(markdown: str) -> set[str]:
    """The section titles of a page (not the `#` lines inside its code blocks)."""
    titles: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.fullmatch(line)):
            titles.add(match.group(1))
    return titles


def broken(cited: list[Citation], docs: Path) -> list[str]:
    """What is wrong with each citation that does not resolve."""
    problems = []
    for citation in cited:
        page = docs / citation.page
        if not page.is_file():
            problems.append(f"{citation}: no such page")
        elif citation.section is not None and citation.section not in headings(page.read_text()):
            problems.append(f"{citation}: the page has no such heading")
    return problems


def all_citations() -> list[Citation]:
    return [c for path in sources(ROOT) for c in citations(path, path.read_text(errors="replace"))]


def test_every_cited_page_and_section_exists() -> None:
    cited = all_citations()
    assert any(c.where.startswith("workers/") and c.section for c in cited), "the scan found no citation"
    assert not broken(cited, DOCS), "\n".join(broken(cited, DOCS))


# -- the check itself ------------------------------------------------------------------------------

PAGE = """# Title

## Names a client sees

```sh
# not a heading
```

### A config change, step by step
"""


# Spelled with {d} for "docs/", so that the scan above does not read these examples as citations.
EXAMPLES = [
    ('"""({d}page.md, "Names a client sees")."""', []),
    ("# see {d}page.md", []),
    ('# ({d}page.md, "A config\n# change, step by step")', []),
    ('"""{d}page.md, "Names a client sees", "A config change, step by step"."""', []),
    ('"""({d}page.md, "Names")."""', ['{d}page.md, "Names": the page has no such heading']),
    ('"""({d}page.md, "not a heading")."""', ['{d}page.md, "not a heading": the page has no such heading']),
    ("# {d}gone.md", ["{d}gone.md: no such page"]),
    ('# {d}sub/gone.md, "X"', ['{d}sub/gone.md, "X": no such page']),
]


@pytest.mark.parametrize(("code", "expected"), EXAMPLES)
def test_a_citation_resolves_only_to_a_page_and_heading_that_exist(
    code: str, expected: list[str], tmp_path: Path
) -> None:
    (tmp_path / "page.md").write_text(PAGE)
    source = tmp_path / "module.py"
    problems = broken(citations(source, code.format(d="docs/")), tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [e.format(d="docs/") for e in expected]
