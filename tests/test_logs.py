"""One log format (README, "Deployment", Logs): a request id only on lines written during a
request, and gunicorn's and uvicorn's lines named for their server."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from asgi_todo import logs


@pytest.fixture
def written(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """What the root logger writes in the format of the test's parameter; the root restored."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    sink = io.StringIO()
    logs.configure(level="info", log_format=request.param, handler=logging.StreamHandler(sink))
    yield sink
    root.handlers[:], level = saved
    root.setLevel(level)


def _log(name: str, message: str, *, rid: str | None = None) -> None:
    token = logs.request_id.set(rid) if rid is not None else None
    try:
        logging.getLogger(name).info(message)
    finally:
        if token is not None:
            logs.request_id.reset(token)


@pytest.mark.parametrize("written", ["text"], indirect=True)
def test_text_lines_carry_the_request_id_only_within_a_request(written: io.StringIO) -> None:
    _log("asgi_todo.db", "outside")
    _log("asgi_todo.db", "inside", rid="abc123")
    outside, inside = written.getvalue().splitlines()
    assert outside.endswith(" asgi_todo.db: outside")
    assert inside.endswith(" asgi_todo.db: inside [rid=abc123]")


@pytest.mark.parametrize("written", ["json"], indirect=True)
def test_json_lines_carry_the_request_id_only_within_a_request(written: io.StringIO) -> None:
    _log("asgi_todo.db", "outside")
    _log("asgi_todo.db", "inside", rid="abc123")
    outside, inside = (json.loads(line) for line in written.getvalue().splitlines())
    assert "request_id" not in outside
    assert inside["request_id"] == "abc123"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        pytest.param("gunicorn.error", "gunicorn", id="gunicorn"),
        pytest.param("uvicorn.error", "uvicorn", id="uvicorn"),
        pytest.param("asgi_todo.db", "asgi_todo.db", id="ours"),
    ],
)
@pytest.mark.parametrize("written", ["text"], indirect=True)
def test_server_lines_are_named_for_the_server(written: io.StringIO, name: str, shown: str) -> None:
    logging.getLogger(name).propagate = True
    _log(name, "Booting worker with pid: 7")
    assert f" {shown}: Booting worker with pid: 7" in written.getvalue()
