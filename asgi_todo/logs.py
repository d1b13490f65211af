"""One log format for the app, uvicorn and gunicorn: text or JSON lines, with the request id.
(gunicorn's logger class is gunicorn_conf.Logger: importing gunicorn here would make every
command read gunicorn's WEB_CONCURRENCY, and fail on a bad one with a traceback.)"""

from __future__ import annotations

import contextvars
import copy
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The request's OpenTelemetry trace id, when tracing is on (tracing.py sets it).
trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

ACCESS_LOGGER = "asgi_todo.access"

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
_EXTRA_FIELDS = ("status", "duration_ms", "trace_id")
_OUTSIDE = "-"
# gunicorn and uvicorn log their ordinary lines ("Booting worker", "Started server process")
# to loggers named for their error logs; under those names a clean start reads like errors.
_RENAMED = {"gunicorn.error": "gunicorn", "uvicorn.error": "uvicorn"}


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request being served (none outside one), and
    names gunicorn's and uvicorn's lines for their server, not for their error logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        record.name = _RENAMED.get(record.name, record.name)
        return True


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: everything some log
# reader takes as the end of a line, or a terminal as a command. A logged value is any text a
# client sent (a path with %0A, a header): escaped, it cannot write a line of its own.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """Control characters as Python escapes (`\\n`, `\\x1b`, `\\u2028`)."""
    return _CONTROL.sub(lambda found: found[0].encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, ending in `[rid=...]` for a line written while serving a request; one line
    per record: the message escaped, and the lines of a traceback indented, so that a line
    starting at the margin is always a record of its own."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        escaped = copy.copy(record)
        escaped.message = escape(record.message)
        line = super().formatMessage(escaped)
        rid = getattr(record, "request_id", _OUTSIDE)
        return line if rid == _OUTSIDE else f"{line} [rid={rid}]"

    def formatException(self, ei: Any) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  " + escape(line) for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", _OUTSIDE)
        if rid != _OUTSIDE:
            entry["request_id"] = rid
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json.dumps escapes the C0 controls; the others become JSON escapes (\u2028) too.
        return _CONTROL.sub(lambda found: f"\\u{ord(found[0]):04x}", json.dumps(entry, ensure_ascii=False))


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(*, level: str, log_format: str, handler: logging.Handler | None = None) -> None:
    """Send the root logger (and so ours and uvicorn's) to one handler, stderr by default."""
    handler = handler or logging.StreamHandler(sys.stderr)
    stamp(handler, formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    quiet_sql()


def stamp(handler: logging.Handler, chosen: logging.Formatter) -> None:
    handler.setFormatter(chosen)
    if not any(isinstance(existing, RequestIdFilter) for existing in handler.filters):
        handler.addFilter(RequestIdFilter())


def quiet_sql() -> None:
    # SQL reaches the logs only with SQL_ECHO=1 (db.make_engine then opens the engine's logger).
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
