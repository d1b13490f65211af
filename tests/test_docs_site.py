"""The README and the documentation site (mkdocs.yml, docs/): generated tables that match the
code, a site that builds strictly and loads nothing from another origin, and a README that
stays short and keeps the blocks that .ci/run reads (docs: Contributing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import docgen

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 250


def test_generated_fragments_match_the_code() -> None:
    stale = docgen.stale()
    assert not stale, f"docs/snippets/{', '.join(stale)} differ from the code: run `{docgen.COMMAND}` and commit them"


def test_every_route_of_the_app_is_in_the_endpoint_table() -> None:
    table = docgen.endpoints_table()
    for path in ("/openapi.json", "/docs", "/redoc", "/metrics", "/livez", "/readyz", "`{P}/todos/{id}`"):
        assert path in table, path


def test_settings_defaults_are_written_as_a_user_writes_them() -> None:
    table = docgen.settings_table()
    for python_repr in ("None", "True", "False", "('", "()"):
        assert python_repr not in table, python_repr
    assert "| `METRICS_ALLOW_IPS` | `127.0.0.1,::1` |" in table
    assert "| `BCRYPT_ROUNDS` | `12` | 4 to 16 |" in table


@pytest.mark.process
def test_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs.yml's validation makes a broken link or anchor, a page left out of the nav and a
    missing included file fail the strict build."""
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr
    pages = {path.name for path in site.glob("*.html")}
    assert {"index.html", "api.html", "configuration.html", "benchmark.html"} <= pages
    assert "| `SECRET_KEY`" not in (site / "configuration.html").read_text()  # the included table rendered
    assert "<td><code>SECRET_KEY</code></td>" in (site / "configuration.html").read_text()
    assert "--8&lt;--" not in "".join(path.read_text() for path in site.glob("*.html"))
    _assert_nothing_from_another_origin(site)


# Attributes that make a browser load something (a link to another site is fine: it is only followed
# when clicked).
_LOADS = re.compile(r"<(?:script|img|iframe|source|link)\b[^>]*?\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"")


def _assert_nothing_from_another_origin(site: Path) -> None:
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert not _LOADS.findall(html), (page.name, _LOADS.findall(html))
        assert "fonts.googleapis" not in html, page.name
        assert "fonts.gstatic" not in html, page.name
    for sheet in site.rglob("*.css"):
        assert not re.search(r"@import|url\((?:'|\")?(?:https?:)?//", sheet.read_text()), sheet.name


def test_readme_is_short_and_keeps_the_blocks_that_ci_reads() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for marker in ("run-command", "test-command"):
        # As .ci/run reads it: the ```sh block after the marker comment.
        block = re.search(rf"<!-- {marker} -->\n```sh\n(.+)\n```\n", text)
        assert block, marker
        assert block.group(1).startswith("python3 -m venv .venv && .venv/bin/pip install"), block.group(1)


def test_readme_examples_are_the_code() -> None:
    """The README's create-a-todo, both ways, is copied from the files it names: every line of
    each block but its comments is in that file, so a change there fails here."""
    text = README.read_text()
    marker = r"<!-- the lines below are in (\S+) \(tests/test_docs_site.py checks it\) -->"
    blocks = re.findall(marker + r"\n```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for path, block in blocks:
        source = {line.strip() for line in (ROOT / path).read_text().splitlines()}
        for line in block.splitlines():
            code = line.strip()
            assert not code or code.startswith("#") or code in source, (path, line)
