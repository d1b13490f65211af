"""The OpenAPI document: valid 3.1, complete for every operation, and the committed copy current."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from asgi_todo.__main__ import main
from asgi_todo.api import OPERATIONS
from asgi_todo.app import create_app
from asgi_todo.openapi import SECURITY_SCHEME, document, document_json
from asgi_todo.operations import Auth, Operation
from asgi_todo.settings import Settings

from .helpers import make_settings

COMMITTED = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def _default_settings() -> Settings:
    return Settings(_env_file=None)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return document(_default_settings())


def _operation(spec: dict[str, Any], operation: Operation, prefix: str = "/api") -> dict[str, Any]:
    found: dict[str, Any] = spec["paths"][operation.full_path(prefix)][operation.method.lower()]
    return found


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = _pointer(spec, node["$ref"])
    return node


def _pointer(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    target: Any = spec
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)
    assert spec["info"]["title"] == "asgi_todo"
    assert spec["info"]["version"]
    assert spec["info"]["description"]


def test_no_dangling_refs(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert refs
    for ref in refs:
        _pointer(spec, ref)  # a KeyError names the dangling one


def test_every_model_named_by_an_operation_is_a_component(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    for name in ("UserRead", "UserReadNested", "TodoRead", "TodoReadNested", "TodoCreate", "PasswordGrant",
                 "ErrorMessage", "ValidationErrorBody", "ValidationIssue"):  # fmt: skip
        assert name in components
    assert not any("$defs" in json.dumps(schema) for schema in components.values())


def test_committed_document_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == document_json(_default_settings()), (
        "openapi/openapi.json differs from the app's document: run `asgi-todo openapi` and commit it"
    )


def test_cli_writes_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    assert main(["openapi", "--output", "spec.json"]) == 0
    assert (tmp_path / "spec.json").read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")


def test_served_document_is_the_committed_one(sqlite_url: str) -> None:
    with TestClient(create_app(make_settings(sqlite_url))) as client:
        response = client.get("/openapi.json")
        assert client.head("/openapi.json").status_code == 200
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == COMMITTED.read_text(encoding="utf-8")


def test_prefix_moves_paths_and_token_url(sqlite_url: str) -> None:
    spec = document(make_settings(sqlite_url, api_prefix="/v2"))
    flow = spec["components"]["securitySchemes"][SECURITY_SCHEME]["flows"]["password"]
    assert flow["tokenUrl"] == "/v2/auth/token"
    assert "/v2/todos/" in spec["paths"]
    assert "/health" in spec["paths"]  # not under the prefix
    assert not any(path.startswith("/api/") for path in spec["paths"])


def test_collection_paths_appear_once(spec: dict[str, Any]) -> None:
    assert "/api/todos/" in spec["paths"]
    assert "/api/todos" not in spec["paths"]
    assert "/api/users" not in spec["paths"]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.name)
def test_every_operation_is_described(spec: dict[str, Any], operation: Operation) -> None:
    described = _operation(spec, operation)
    assert described["operationId"] == operation.name
    assert described["tags"] == [operation.tag]
    assert described["summary"]
    responses = described["responses"]
    assert set(responses) == {str(status) for status in (operation.status, *operation.replies, *operation.errors)}
    for status, response in responses.items():
        response = _resolve(spec, response)
        assert response["description"]
        if status not in ("204", "304"):
            assert "application/json" in response["content"], status
        else:
            assert "content" not in response, status
    headers = {p["name"] for p in described.get("parameters", ()) if p["in"] == "header"}
    assert headers == set(operation.request_headers)
    if operation.auth is Auth.NONE:
        assert described["security"] == []  # public, and says so
    else:
        assert described["security"] == [{SECURITY_SCHEME: []}]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.name)
def test_declared_errors_cover_what_the_glue_can_answer(operation: Operation) -> None:
    """Operations declare their errors by hand; these are the ones the glue itself raises."""
    implied = set()
    if operation.auth is not Auth.NONE:
        implied.add(401)
    if operation.auth is Auth.SUPERUSER:
        implied.add(403)
    if operation.params or operation.query or operation.body or operation.form:
        implied.add(422)
    if operation.body or operation.form:
        implied |= {413, 415}
    assert implied <= set(operation.errors)


def test_error_responses_have_their_shapes_and_headers(spec: dict[str, Any]) -> None:
    responses = spec["components"]["responses"]
    assert responses["ValidationError"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationErrorBody"
    }
    assert responses["NotFound"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorMessage"
    }
    assert responses["NotAuthenticated"]["headers"]["WWW-Authenticate"]["schema"]["const"] == "Bearer"


def test_health_answers_503_with_its_own_shape(spec: dict[str, Any]) -> None:
    health = spec["paths"]["/health"]["get"]["responses"]
    assert health["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}


def test_query_parameters_carry_constraints_and_defaults(spec: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in spec["paths"]["/api/todos/"]["get"]["parameters"]}
    assert parameters["limit"]["in"] == "query"
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}
    assert parameters["offset"]["schema"]["minimum"] == 0
    assert parameters["offset"]["schema"]["default"] == 0
    # Optional filters are left out, never sent as null: a query string has no null.
    assert parameters["completed"]["schema"] == {"type": "boolean"}
    assert parameters["user_id"]["schema"]["type"] == "integer"
    assert not any(p["required"] for p in parameters.values())


def test_path_parameters_are_required_and_bounded(spec: dict[str, Any]) -> None:
    (parameter,) = [p for p in spec["paths"]["/api/todos/{id}"]["get"]["parameters"] if p["in"] == "path"]
    assert parameter["in"] == "path"
    assert parameter["required"] is True
    assert parameter["schema"]["minimum"] == 1
    assert parameter["schema"]["maximum"] == 2**31 - 1


def test_token_form_is_one_schema_per_grant(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/api/auth/token"]["post"]["requestBody"]
    grants = body["content"]["application/x-www-form-urlencoded"]["schema"]["oneOf"]
    password, refresh = (_resolve(spec, grant) for grant in grants)
    assert password["properties"]["grant_type"]["const"] == "password"
    assert set(password["required"]) == {"username", "password"}  # grant_type may be left out
    assert refresh["properties"]["grant_type"]["const"] == "refresh_token"
    assert set(refresh["required"]) == {"grant_type", "refresh_token"}
    for grant in (password, refresh):
        assert {"scope", "client_id", "client_secret"} <= set(grant["properties"])
        assert all("anyOf" not in field for field in grant["properties"].values())
    assert "OtherGrant" not in spec["components"]["schemas"]  # validated, refused with a 400, not offered


def test_public_operations_have_empty_security_and_the_document_names_its_server(spec: dict[str, Any]) -> None:
    assert spec["servers"] == [{"url": "/", "description": "The server that serves this document."}]
    assert spec["paths"]["/api/auth/token"]["post"]["security"] == []
    assert spec["paths"]["/api/users/signup"]["post"]["security"] == []


def _request_and_response_models(spec: dict[str, Any]) -> tuple[set[str], set[str]]:
    requests, responses = set(), set()
    for item in spec["paths"].values():
        for operation in item.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                requests |= {ref.rsplit("/", 1)[1] for ref in _refs(media)}
            for response in operation["responses"].values():
                for media in _resolve(spec, response).get("content", {}).values():
                    responses |= {ref.rsplit("/", 1)[1] for ref in _refs(media)}
    return requests, responses


def test_response_fields_that_are_always_sent_are_required(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    _, responses = _request_and_response_models(spec)
    assert {"Token", "TodoRead", "UserRead", "Health"} <= responses
    for name in responses - {"ValidationErrorBody", "ValidationIssue"}:
        schema = components[name]
        assert set(schema["required"]) == set(schema["properties"]), name
    assert "token_type" in components["Token"]["required"]
    issue = components["ValidationIssue"]
    assert "ctx" not in issue["required"]  # left out when there is none, never null
    assert issue["properties"]["ctx"]["type"] == "object"


def test_request_bodies_have_no_defaults(spec: dict[str, Any]) -> None:
    """A default reads as "always present" to generators: a field one may leave out must not carry one."""
    components = spec["components"]["schemas"]
    requests, responses = _request_and_response_models(spec)
    assert {"TodoCreate", "UserCreate", "PasswordGrant"} <= requests
    assert not requests & responses
    for name in requests:
        assert not [field for field in components[name]["properties"].values() if "default" in field], name
    assert components["TodoCreate"]["required"] == ["text"]


def test_json_bodies_reference_their_models(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/api/todos/"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TodoCreate"}
    text = spec["components"]["schemas"]["TodoCreate"]["properties"]["text"]
    assert (text["minLength"], text["maxLength"]) == (1, 1000)


def test_created_todo_links_to_its_operations(spec: dict[str, Any]) -> None:
    links = spec["paths"]["/api/todos/"]["post"]["responses"]["201"]["links"]
    assert links["get_todo"] == {"operationId": "get_todo", "parameters": {"id": "$response.body#/id"}}
    assert {"replace_todo", "update_todo", "delete_todo"} <= set(links)
