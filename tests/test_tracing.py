"""OpenTelemetry traces from the `otel` extra (docs: Operations, "Metrics and traces"): a span per
request with a child per SQL statement, the incoming `traceparent` honoured, the trace id
in the access log; and without TRACING nothing of OpenTelemetry is imported."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from asgi_todo.app import create_app
from asgi_todo.logs import ACCESS_LOGGER
from asgi_todo.settings import ConfigError, load_settings

from .helpers import ALICE, login, make_settings

_EXPORTER = InMemorySpanExporter()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    """The SDK with an in-memory exporter, as the process's provider (it can be set once)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.fail("another tracer provider was set before this module")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def test_a_request_span_parents_its_sql_spans_under_the_incoming_trace(
    database_url: str, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, reset_db=False, tracing=True)
    with TestClient(create_app(settings)) as client:
        headers = login(client, *ALICE)
        exporter.clear()
        caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        response = client.get("/api/todos", headers={**headers, "traceparent": traceparent})
    assert response.status_code == 200

    spans = exporter.get_finished_spans()
    servers = [span for span in spans if span.kind == trace.SpanKind.SERVER]
    assert len(servers) == 1, [span.name for span in spans]
    server = servers[0]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    sql = [span for span in spans if span.kind == trace.SpanKind.CLIENT]
    assert sql, [span.name for span in spans]
    for span in sql:
        assert span.context.trace_id == server.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
    assert any("SELECT" in str(span.attributes.get("db.statement", "")) for span in sql if span.attributes)

    lines = [
        record for record in caplog.records if record.name == ACCESS_LOGGER and "/api/todos" in record.getMessage()
    ]
    assert len(lines) == 1
    assert f"trace={TRACE_ID}" in lines[0].getMessage()
    assert lines[0].__dict__["trace_id"] == TRACE_ID


@pytest.mark.process
def test_without_tracing_nothing_of_opentelemetry_is_imported(sqlite_url: str) -> None:
    script = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from asgi_todo.app import create_app\n"
        "from tests.helpers import make_settings\n"
        f"with TestClient(create_app(make_settings({sqlite_url!r}))) as client:\n"
        "    assert client.get('/health').status_code == 200\n"
        "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_tracing_without_the_extra_stops_start_up_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name.startswith("opentelemetry") else real(name, *args)
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(tracing="1")
    assert str(raised.value) == "TRACING: needs OpenTelemetry: pip install 'asgi_todo[otel]'"
