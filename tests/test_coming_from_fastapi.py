"""docs/coming-from-fastapi.md cannot drift from the code it shows (docs: Coming from FastAPI).

The page includes its code with pymdownx.snippets (`--8<-- "path:section"`, the section
between `# --8<-- [start:section]` and `# --8<-- [end:section]` in that file), and states in a
table how many lines of asgi_todo do what FastAPI gives for free. Both are checked here
against the files, without MkDocs: every snippet of every page resolves to a non-empty
section, and every count is the count of today's code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGE = DOCS / "coming-from-fastapi.md"
# A snippet line of pymdownx.snippets: a file, or a file and a section.
SNIPPET = re.compile(r'^\s*-{1,}8<-{1,}\s+"(?P<path>[^":]+)(?::(?P<section>[A-Za-z0-9_-]+))?"\s*$')
# A row of the page's count table: the code (a file or a section), what it does, its lines.
COUNT_ROW = re.compile(r"^\|\s*`(?P<code>[^`]+)`\s*\|[^|]*\|\s*(?P<lines>[\d,]+)\s*\|$")
TOTAL_ROW = re.compile(r"^\|\s*\*\*total\*\*\s*\|[^|]*\|\s*\*\*(?P<lines>[\d,]+)\*\*\s*\|$")


def section(path: Path, name: str) -> list[str]:
    """The lines between a section's start and end markers; fails unless there is exactly one."""
    lines = path.read_text().splitlines()
    # A marker sits in a comment: `# --8<-- [start:name]` in code, `<!-- --8<-- [start:name] -->` in Markdown.
    starts = [n for n, line in enumerate(lines) if f"--8<-- [start:{name}]" in line]
    ends = [n for n, line in enumerate(lines) if f"--8<-- [end:{name}]" in line]
    where = f"{path.relative_to(ROOT)}: section {name!r}"
    assert len(starts) == 1, f"{where} must start once"
    assert len(ends) == 1, f"{where} must end once"
    assert starts[0] < ends[0], f"{where} ends before it starts"
    return lines[starts[0] + 1 : ends[0]]


def code_lines(lines: list[str]) -> int:
    """What the page counts: lines that are neither blank nor only a comment (docstrings count)."""
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def snippets(page: Path) -> list[tuple[Path, str | None]]:
    found = []
    for line in page.read_text().splitlines():
        match = SNIPPET.match(line)
        if match:
            found.append((ROOT / match["path"], match["section"]))
    return found


def test_the_page_includes_code_from_both_sides() -> None:
    included = {(path.relative_to(ROOT).as_posix(), name) for path, name in snippets(PAGE)}
    assert ("asgi_todo/api/todos.py", "create") in included
    assert ("tests/bench/fastapi_twin.py", "create") in included
    assert ("tests/bench/fastapi_ourdata_twin.py", "create") in included


@pytest.mark.parametrize("page", sorted(DOCS.glob("**/*.md")), ids=lambda page: page.name)
def test_every_snippet_resolves_to_a_non_empty_section(page: Path) -> None:
    for path, name in snippets(page):
        assert path.is_file(), f"{page.name}: {path.relative_to(ROOT)} does not exist"
        lines = path.read_text().splitlines() if name is None else section(path, name)
        assert code_lines(lines) > 0, f"{page.name}: {path.relative_to(ROOT)}:{name} is empty"


def test_the_counts_of_what_fastapi_gives_for_free_are_todays() -> None:
    counted = 0
    stated_total = None
    for line in PAGE.read_text().splitlines():
        row = COUNT_ROW.match(line)
        if row:
            file, _, name = row["code"].partition(":")
            lines = section(ROOT / file, name) if name else (ROOT / file).read_text().splitlines()
            assert int(row["lines"].replace(",", "")) == code_lines(lines), f"{row['code']}: count it again"
            counted += code_lines(lines)
        total = TOTAL_ROW.match(line)
        if total:
            stated_total = int(total["lines"].replace(",", ""))
    assert counted > 0, "the page has no count table"
    assert stated_total == counted, f"the total row says {stated_total}, the rows add up to {counted}"
