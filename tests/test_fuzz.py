"""Property-based fuzzing with hypothesis (docs: Security, "How it is tested"): any
JSON body, query string or header on any operation of the live /openapi.json answers 2xx or
a status that operation documents, never a 5xx; and after a 4xx, what was stored (every user
and todo) is unchanged.

One app per test (and per database): hypothesis runs every example against the same client,
so the function-scoped fixtures are shared on purpose. A 2xx that changed the data is followed
by a reset to the demo data, so that each example starts from the same state.
"""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from asgi_todo import startup
from asgi_todo.settings import Settings

from .helpers import ALICE, JOHN, examples, forge

FUZZ = hypothesis_settings(
    max_examples=examples(60),
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure in CI reproduces locally
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
METHODS = ("get", "post", "put", "patch", "delete")
CHECKED_IN = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def _operation_ids() -> list[str]:
    """The checked-in document names the operations to collect; each test then reads the live
    one (test_owasp's API9 test holds the two equal)."""
    paths: dict[str, dict[str, Any]] = json.loads(CHECKED_IN.read_text())["paths"]
    return [
        operation["operationId"] for item in paths.values() for method, operation in item.items() if method in METHODS
    ]


# Values the API gives meaning to, so that examples also reach past the first validation, and
# a fuzzer's usual dictionary of awkward strings.
KNOWN = [ALICE[0], ALICE[1], JOHN[0], JOHN[1], "password", "refresh_token", "", "0", "1", "3", "-1", "true", "null"]
NASTY = ["\x00", "a\x00b", "%00", "' OR '1'='1", "\u202e", "\U0001d54f", "\ufeff", "a" * 1001, "é" * 73, " " * 3]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(KNOWN + NASTY)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
texts = st.text(max_size=40) | st.sampled_from(KNOWN) | st.sampled_from(NASTY) | st.integers().map(str)
callers = st.sampled_from(["alice", "alice", "alice", "john", "anonymous", "garbage"])
# A path segment: anything but what would make it another path ("/", "?", "#", dot segments).
segments = (
    st.integers(min_value=1, max_value=5).map(str)
    | st.integers(min_value=1, max_value=5).map(str)
    | st.integers().map(str)
    | st.text(alphabet=string.printable.replace("/", "").replace("?", "").replace("#", ""), min_size=1, max_size=12)
).filter(lambda segment: segment.strip(".") != "")


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str
    spec: dict[str, Any]
    body_fields: dict[str, Any]  # name -> JSON Schema
    query_fields: tuple[str, ...]
    form: bool

    @property
    def documented(self) -> set[str]:
        return set(self.spec["responses"])


@dataclass
class Target:
    client: TestClient
    settings: Settings
    engine: sa.Engine
    operations: list[Operation]
    callers: dict[str, dict[str, str]]

    def snapshot(self) -> list[list[tuple[Any, ...]]]:
        with self.engine.connect() as connection:
            return [
                [tuple(row) for row in connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY id"))]  # noqa: S608
                for table in ("users", "todos")
            ]

    def operation(self, operation_id: str) -> Operation:
        found = [operation for operation in self.operations if operation.id == operation_id]
        assert found, f"{operation_id} is not in the live /openapi.json"
        return found[0]

    def reset(self) -> None:
        startup.prepare(self.settings, start=uuid.uuid4().hex, force=True)


def _operations(document: dict[str, Any]) -> list[Operation]:
    schemas = document["components"]["schemas"]

    def fields(content: dict[str, Any]) -> dict[str, Any]:
        schema = content.get("schema", {})
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        properties: dict[str, Any] = schema.get("properties", {})
        return properties

    found = []
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            spec = item[method]
            content = spec.get("requestBody", {}).get("content", {})
            form = "application/x-www-form-urlencoded" in content
            body = content.get("application/json") or content.get("application/x-www-form-urlencoded") or {}
            query = tuple(parameter["name"] for parameter in spec.get("parameters", ()) if parameter["in"] == "query")
            found.append(Operation(spec["operationId"], method.upper(), path, spec, fields(body), query, form))
    return found


@pytest.fixture
def target(client: TestClient, settings: Settings, john: dict[str, str], alice: dict[str, str]) -> Iterator[Target]:
    document = client.get("/openapi.json").json()
    engine = sa.create_engine(settings.database_url)
    callers = {"anonymous": {}, "john": john, "alice": alice, "garbage": {"Authorization": "Bearer garbage"}}
    try:
        yield Target(client, settings, engine, _operations(document), callers)
    finally:
        engine.dispose()


def _typed(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly values of the property's own type (to get past type checks), sometimes anything."""
    kinds = {schema.get("type")} | {option.get("type") for option in schema.get("anyOf", ())}
    if "string" in kinds:
        typed: st.SearchStrategy[Any] = texts
    elif "boolean" in kinds:
        typed = st.booleans()
    elif "integer" in kinds:
        typed = st.integers()
    else:
        typed = json_values
    return st.one_of(typed, typed, typed, json_values)


def _url(path: str, segment: str) -> str:
    return path.replace("{id}", quote(segment, safe=""))


def _check(target: Target, operation: Operation, before: list[list[tuple[Any, ...]]], response: Any) -> None:
    status = response.status_code
    assert status < 500, (operation.method, operation.path, status, response.text[:500])
    assert str(status) in operation.documented, (operation.method, operation.path, status, response.text[:500])
    if status >= 400:
        assert isinstance(response.json()["detail"], str | list), response.text[:500]
        assert target.snapshot() == before, (operation.method, operation.path, status)
    elif target.snapshot() != before:
        target.reset()


@pytest.mark.parametrize("operation_id", _operation_ids())
@FUZZ
@given(data=st.data())
def test_any_json_body_on_any_operation(target: Target, operation_id: str, data: st.DataObject) -> None:
    operation = target.operation(operation_id)
    caller = data.draw(callers, label="caller")
    url = _url(operation.path, data.draw(segments, label="id"))
    fields = {name: _typed(schema) for name, schema in operation.body_fields.items()}
    shaped = st.fixed_dictionaries(fields) | st.fixed_dictionaries({}, optional=fields)
    headers = dict(target.callers[caller])
    before = target.snapshot()
    if operation.form and data.draw(st.sampled_from([True, True, False]), label="as form"):
        form = data.draw(st.fixed_dictionaries({}, optional=dict.fromkeys(operation.body_fields, texts)), label="form")
        response = target.client.request(operation.method, url, data=form, headers=headers)
    else:
        body = data.draw(st.one_of(shaped, shaped, shaped, json_values), label="body")
        response = target.client.request(operation.method, url, json=body, headers=headers)
    _check(target, operation, before, response)


@hypothesis_settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_any_query_string_on_any_operation(target: Target, data: st.DataObject) -> None:
    operation = data.draw(st.sampled_from(target.operations), label="operation")
    caller = data.draw(callers, label="caller")
    url = _url(operation.path, data.draw(segments, label="id"))
    names = st.text(max_size=12)
    if operation.query_fields:
        names = st.sampled_from(operation.query_fields) | names
    query: list[tuple[str, str | int | float | bool | None]] = data.draw(
        st.lists(st.tuples(names, texts), max_size=6), label="query"
    )
    before = target.snapshot()
    response = target.client.request(operation.method, url, params=query, headers=target.callers[caller])
    _check(target, operation, before, response)


# Headers (docs: Security, "Resource limits"): conditional requests, credentials and forwarded addresses that no
# client should send still get a documented answer.

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
# Ids and versions: the demo's, and the ones past what a column or int() can hold.
numbers = st.sampled_from(["1", "3", "4", "0", "2147483648", "9223372036854775808", "9" * 5000]) | st.integers(
    min_value=-1, max_value=2**64
).map(str)
entity_tags = (
    st.tuples(numbers, numbers).map(lambda pair: f'"{pair[0]}.{pair[1]}"')
    | st.sampled_from(["*", '""', "W/", '"1.1"', '"3.1"', 'W/"3.1"'])
    | header_text
)
conditions = st.lists(entity_tags, min_size=1, max_size=4).map(", ".join)
subjects = numbers | header_text | st.sampled_from(["1", "2", "9999999999"])
authorizations = (
    subjects.map(lambda subject: f"Bearer {forge(sub=subject)}")
    | header_text.map(lambda token: f"Bearer {token}")
    | header_text
)
forwarded = st.lists(st.ip_addresses().map(str) | header_text, min_size=1, max_size=3).map(", ".join)
header_values = {
    "If-Match": conditions,
    "If-None-Match": conditions,
    "Authorization": authorizations,
    "X-Forwarded-For": forwarded,
}


@pytest.mark.parametrize("operation_id", _operation_ids())
@hypothesis_settings(FUZZ, max_examples=examples(40))
@given(data=st.data())
def test_any_headers_on_any_operation(target: Target, operation_id: str, data: st.DataObject) -> None:
    operation = target.operation(operation_id)
    caller = data.draw(callers, label="caller")
    url = _url(operation.path, data.draw(segments, label="id"))
    drawn = data.draw(st.fixed_dictionaries({}, optional=header_values), label="headers")
    # Bytes: a header value is Latin-1 on the wire, which httpx would refuse as a str.
    headers = {name.encode(): value.encode("latin-1") for name, value in {**target.callers[caller], **drawn}.items()}
    body = {"text": "fuzzed", "completed": True} if operation.body_fields and not operation.form else None
    before = target.snapshot()
    response = target.client.request(operation.method, url, json=body, headers=headers)
    _check(target, operation, before, response)
