"""The documentation's tables that the code defines: the settings (docs/configuration.md) and
the endpoints (docs/api.md), written as Markdown fragments that those pages include.

    python -m tests.docgen            # rewrite docs/snippets/*.md
    python -m tests.docgen --check    # exit 1 naming each fragment that differs

tests/test_docs_site.py fails while a committed fragment differs from what this writes.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from starlette.routing import BaseRoute, Mount, Route

from asgi_todo.api import OPERATIONS
from asgi_todo.app import create_app
from asgi_todo.operations import Auth, Operation
from asgi_todo.settings import UNSET_MEANS, Settings, written_default

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "docs" / "snippets"
COMMAND = "python -m tests.docgen"

_AUTH = {Auth.NONE: "none", Auth.USER: "bearer", Auth.SUPERUSER: "bearer, superuser"}

# The routes that are not API operations, each with what it answers. A route of the app that is
# missing here stops the generator, so the table cannot leave one out.
_OTHER_ROUTES = {
    "/openapi.json": "the OpenAPI 3.1 document of the operations above",
    "/docs": "Swagger UI, served entirely by the app",
    "/docs/swagger-ui-init.js": "Swagger UI's start-up script",
    "/docs/static": "Swagger UI's files",
    "/redoc": "ReDoc, served entirely by the app",
    "/redoc/redoc-init.js": "ReDoc's start-up script",
    "/redoc/static": "ReDoc's files",
    "/metrics": "Prometheus metrics, for `METRICS_ALLOW_IPS` or on `METRICS_PORT` only "
    "([Metrics and traces](operations.md#metrics-and-traces))",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: Iterator[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# Settings


def _variables(name: str, field: FieldInfo) -> str:
    names = [name.upper()]
    choices = getattr(field.validation_alias, "choices", ())
    names += [str(alias) for alias in choices if str(alias).isupper() and str(alias) != name.upper()]
    return ", ".join(f"`{variable}`" for variable in names)


def _bound(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _range(field: FieldInfo) -> str:
    """What the field's type and constraints accept, as a reader writes it."""
    low = high = ""
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = _bound(rule.ge)
        elif isinstance(rule, annotated_types.Gt):
            low = f"over {_bound(rule.gt)}"
        elif isinstance(rule, annotated_types.Le):
            high = _bound(rule.le)
        elif isinstance(rule, annotated_types.Lt):
            high = f"under {_bound(rule.lt)}"
        elif getattr(rule, "pattern", None):
            return f"matches `{rule.pattern}`"
    if low or high:
        if low.startswith("over"):
            return f"{low}, up to {high}" if high else low
        return f"{low} to {high}" if high else f"from {low}"
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    if annotation is bool:
        return "`0`, `1`"
    return ""


def _default(name: str, model: type[BaseModel]) -> str:
    """A value in code type, words (what leaving it unset means) as prose."""
    written = written_default(name, model)
    return written if name in UNSET_MEANS else f"`{written}`"


def settings_table(model: type[BaseModel] = Settings) -> str:
    """One row per field of a model of settings read from the environment."""
    rows = (
        (_variables(name, field), _default(name, model), _range(field), field.description or "")
        for name, field in model.model_fields.items()
    )
    return _table(("variable", "default", "range", "meaning"), rows)


# Endpoints


def _type_name(response: Any) -> str:
    if typing.get_origin(response) is list:
        (item,) = typing.get_args(response)
        return f"list of {_type_name(item)}"
    if isinstance(response, types.UnionType) or typing.get_origin(response) is typing.Union:
        return " or ".join(_type_name(part) for part in typing.get_args(response))
    return str(getattr(response, "__name__", response))


def _success(operation: Operation) -> str:
    answer = f"{operation.status} {_type_name(operation.response)}" if operation.response else str(operation.status)
    replies = ", ".join(str(status) for status in operation.replies)
    return f"{answer}; also {replies}" if replies else answer


def _path(operation: Operation) -> str:
    return f"`{operation.full_path('{P}')}`"


def endpoints_table() -> str:
    rows = (
        (
            operation.method,
            _path(operation),
            _AUTH[operation.auth],
            _success(operation),
            ", ".join(str(status) for status in operation.errors),
            operation.summary,
        )
        for operation in OPERATIONS
    )
    operations = _table(("method", "path", "auth", "success", "errors", "what"), rows)
    other = _table(("method", "path", "what"), (("GET", f"`{path}`", what) for path, what in _other_routes()))
    return f"{operations}\nBeside the operations, outside `{{P}}`:\n\n{other}"


def _other_routes() -> Iterator[tuple[str, str]]:
    settings = Settings(database_url="sqlite:///./asgi_todo.db", metrics=True)
    operation_paths = {operation.full_path(settings.api_prefix) for operation in OPERATIONS}
    routes: list[BaseRoute] = create_app(settings).routes
    for route in routes:
        path = route.path if isinstance(route, Route | Mount) else ""
        shown = f"{path}/..." if isinstance(route, Mount) else path
        if path in operation_paths or f"{path}/" in operation_paths:
            continue
        if path not in _OTHER_ROUTES:
            raise SystemExit(f"{COMMAND}: the route {path!r} has no row: add it to _OTHER_ROUTES in tests/docgen.py")
        yield shown, _OTHER_ROUTES[path]


# Each fragment and what writes it; another model of settings is one more line, e.g.
# "server-settings.md": partial(settings_table, ServerSettings), included where its page needs it.
FRAGMENTS: dict[str, Callable[[], str]] = {"settings.md": settings_table, "endpoints.md": endpoints_table}


def stale() -> list[str]:
    """The fragments whose committed file differs from what the code generates."""
    return [
        name
        for name, generate in FRAGMENTS.items()
        if not (SNIPPETS / name).exists() or (SNIPPETS / name).read_text(encoding="utf-8") != generate()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a fragment is stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            print(f"docs/snippets/{name} differs from the code: run `{COMMAND}`", file=sys.stderr)
        return 1 if names else 0
    SNIPPETS.mkdir(exist_ok=True)
    for name, generate in FRAGMENTS.items():
        (SNIPPETS / name).write_text(generate(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
