"""OpenTelemetry traces, from the optional extra (`pip install 'asgi_todo[otel]'`, `TRACING=1`).

A span per request (OpenTelemetry's ASGI middleware, which honours an incoming W3C
`traceparent`) and a child span per SQL statement (its SQLAlchemy engine tracer; the SQL
threads run in the request's context, so the statements nest under the request). The trace
id goes into the access log line beside the request id. Spans are exported with OTLP over
HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set;
every other `OTEL_*` variable of the SDK applies as usual. Only `app` imports this module,
and only with TRACING on: without the extra nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import os

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy import Engine
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .logs import trace_id

_OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def provider() -> trace.TracerProvider:
    """The process's tracer provider: one set by the host program (or a test) if any,
    otherwise the SDK's, exporting with OTLP when an endpoint is configured."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current
    sdk = TracerProvider(resource=Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "asgi_todo")}))
    if any(os.environ.get(name) for name in _OTLP_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        sdk.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(sdk)
    return trace.get_tracer_provider()


def middleware() -> list[Middleware]:
    """Outermost: the request's span, then its trace id for the logs."""
    return [
        Middleware(OpenTelemetryMiddleware, tracer_provider=provider(), exclude_spans=["receive", "send"]),
        Middleware(_TraceIdToLogs),
    ]


def instrument(engine: Engine) -> None:
    """A child span for every SQL statement run on `engine`."""
    tracer = trace.get_tracer("asgi_todo.sql", __version__, tracer_provider=provider())
    meter = metrics.get_meter("asgi_todo.sql", __version__)
    usage = meter.create_up_down_counter("db.client.connections.usage", unit="connections")
    EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]


class _TraceIdToLogs:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            await self.app(scope, receive, send)
            return
        token = trace_id.set(format(context.trace_id, "032x"))
        try:
            await self.app(scope, receive, send)
        finally:
            trace_id.reset(token)
