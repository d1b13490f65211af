"""The benchmark still runs: every app it compares answers every scenario, on both databases.

The benchmark is a tool, not a test (docs: Benchmark): nothing here looks at a timing. This
only runs it once, briefly, so that a change to asgi_todo, a twin or the ceiling that breaks
one of them (a ceiling that could not read the stored password hashes answered the token
request with a 500 for a whole session) fails the suite instead of the next benchmark run.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.bench import run, stack

from .helpers import POSTGRES_ADMIN_URL, require

pytestmark = pytest.mark.process


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_every_app_answers_every_scenario_without_an_error(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    require(shutil.which("wrk") is not None, "wrk")
    if db == "postgresql":
        request.getfixturevalue("postgres_admin")
        # A database of this test's own: a benchmark running beside the suite keeps its own.
        monkeypatch.setattr(run, "BENCH_DATABASE", f"asgi_todo_bench_test_{uuid.uuid4().hex[:8]}")
    out = tmp_path / "out"
    # Fewer connections than a benchmark's 32: enough to run every scenario concurrently,
    # without the Litestar twin's 40-connection pool meeting the other apps' on a busy server.
    brief = "--duration 1 --warmup 0 --repeats 1 --connections 8 --bcrypt-rounds 4 --latency --latency-duration 1"
    argv = [*brief.split(), "--db", db, "--users", "20", "--todos", "2000", "--out", str(out)]
    try:
        # Exits 1 when any request got a non-2xx answer or a socket error; raises when a
        # scenario's first request does not answer its 2xx.
        assert run.main(argv) == 0
    finally:
        if db == "postgresql":
            _drop(run.BENCH_DATABASE)
    summary = json.loads((out / "results.json").read_text())["summary"]
    answered = {app for block in summary for row in block["scenarios"] for app in row["apps"]}
    assert answered == set(run.APPS)


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(["--count", "cpu"], id="cpu"),
        pytest.param(["--count", "instructions"], id="instructions"),
        pytest.param(
            ["--count", "instructions", "--through", "uvicorn", "--metrics-files"], id="instructions-uvicorn-files"
        ),
    ],
)
def test_the_in_process_tool_measures_metrics_on_and_off(count: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    if "instructions" in count:
        require(shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None, "valgrind")
    argv = ["--db", "sqlite", "--requests", "50", "--repeats", "1", "--scenarios", "health", *count]
    assert stack.main(argv) == 0
    figures = re.search(r"^sqlite +health +on +([\d.]+) +off +([\d.]+) ", capsys.readouterr().out, re.MULTILINE)
    assert figures is not None
    on, off = float(figures[1]), float(figures[2])
    assert min(on, off) > 0
    if "instructions" in count:
        # Counted, not timed: the same code gives the same count, and the metrics' own work
        # (a histogram observation, a counter, the in-flight mark) is never free.
        assert on > off


def _drop(name: str) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
