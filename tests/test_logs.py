"""One log format (docs: Operations, "Logs"): a request id only on lines written during a
request, and gunicorn's and uvicorn's lines named for their server. Logs cannot be forged
(docs: Security, "Logs"): whatever a client puts in a request, every record stays one line in the
text format and one JSON object in the JSON format."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from asgi_todo import logs
from asgi_todo.app import create_app
from asgi_todo.settings import Settings


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


FORGED = 'x\n2026-12-01 10:00:00,000 INFO [1] asgi_todo.access: 203.0.113.7 "GET /admin HTTP/1.1" 200 1.0ms'
# Every character that some log reader takes as the end of a line, and the other controls.
BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
CONTROLS = ["\x00", "\x1b[31m", "\x7f", "\x9b"]


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    made = logging.LogRecord("asgi_todo.test", logging.INFO, __file__, 1, message, args, None)
    made.request_id = "-"
    if exc_info:
        try:
            raise ValueError(FORGED)
        except ValueError:
            made.exc_info = sys.exc_info()
    return made


def one_line(text: str) -> None:
    assert text.splitlines() == [text], repr(text)
    assert not any(control in text for control in CONTROLS), repr(text)


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("value", [FORGED, *BREAKS, *CONTROLS], ids=repr)
def test_a_logged_value_cannot_break_the_line(log_format: str, value: str) -> None:
    formatted = logs.formatter(log_format).format(record("user said %s", value))
    one_line(formatted)
    if log_format == "json":
        assert json.loads(formatted)["message"].startswith("user said ")


def test_an_exception_message_cannot_start_a_line_of_its_own() -> None:
    """Tracebacks keep their lines, but every line after the record's first is indented, so
    a line that starts at the margin is always a record."""
    lines = logs.formatter("text").format(record("failed", exc_info=True)).splitlines()
    assert len(lines) > 2
    assert all(line.startswith(" ") for line in lines[1:]), lines


def test_a_json_exception_is_one_line() -> None:
    one_line(logs.formatter("json").format(record("failed", exc_info=True)))


@pytest.fixture
def logged(settings: Settings) -> Iterator[tuple[TestClient, io.StringIO]]:
    """A client, and the text of the access log in the text format."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("text"))
    handler.addFilter(logs.RequestIdFilter())
    access = logging.getLogger(logs.ACCESS_LOGGER)
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        with TestClient(create_app(settings)) as client:
            yield client, stream
    finally:
        access.removeHandler(handler)
        access.setLevel(level)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/%0A2026-12-01%20INFO%20forged", id="path-newline"),
        pytest.param("/health?a=%0D%0Aforged", id="query-crlf"),
        pytest.param("/%E2%80%A8forged", id="path-line-separator"),
        pytest.param("/%1B%5B31mred", id="path-escape-sequence"),
    ],
)
def test_a_request_writes_one_access_line(logged: tuple[TestClient, io.StringIO], target: str) -> None:
    client, stream = logged
    client.get(target)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    one_line(lines[0])
