"""Security headers and CORS (docs: Security, "Headers"): nosniff, a Referrer-Policy, no framing on every
response; no-store on the token and on every answer to a request with credentials; CORS from
CORS_ORIGINS, preflights answered, never `*` together with credentials."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from asgi_todo.app import create_app

from .helpers import ALICE, login, make_settings

ORIGIN = "https://app.example.com"
SAFE_REFERRER_POLICIES = {"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"}


def assert_security_headers(response: Any) -> None:
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff", headers
    assert headers["X-Frame-Options"] == "DENY", headers
    assert headers["Referrer-Policy"] in SAFE_REFERRER_POLICIES, headers


def no_store(response: Any) -> bool:
    directives = {part.strip().lower() for part in response.headers.get("Cache-Control", "").split(",")}
    return "no-store" in directives


def token_form(grant: str = "password") -> dict[str, str]:
    return {"username": ALICE[0], "password": ALICE[1], "grant_type": grant}


# Every response


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        pytest.param("GET", "/", {}, 200, id="root"),
        pytest.param("GET", "/health", {}, 200, id="health"),
        pytest.param("GET", "/openapi.json", {}, 200, id="openapi"),
        pytest.param("GET", "/docs", {}, 200, id="docs"),
        pytest.param("GET", "/docs/static/swagger-ui.css", {}, 200, id="docs-asset"),
        pytest.param("POST", "/api/auth/token", {"data": token_form()}, 200, id="token"),
        pytest.param("POST", "/api/auth/token", {"data": {"username": "x", "password": "y"}}, 401, id="token-401"),
        pytest.param("POST", "/api/auth/token", {"data": token_form("foo")}, 400, id="token-400"),
        pytest.param("GET", "/api/todos/", {}, 401, id="401"),
        pytest.param("GET", "/nope", {}, 404, id="404"),
        pytest.param("DELETE", "/health", {}, 405, id="405"),
        pytest.param("POST", "/api/users/signup", {"json": {}}, 422, id="422"),
        pytest.param(
            "POST", "/api/users/signup", {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415, id="415"
        ),
        pytest.param("GET", "/api/todos", {}, 401, id="no-slash"),
    ],
)
def test_every_response_has_the_security_headers(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert_security_headers(response)


def test_authenticated_answers_and_304s_have_the_security_headers(client: TestClient, alice: dict[str, str]) -> None:
    responses = [
        client.get("/api/todos/", headers=alice),
        client.get("/api/todos/3", headers=alice),
        client.post("/api/todos/", json={"text": "x"}, headers=alice),
        client.delete("/api/todos/4", headers=alice),
        client.get("/api/todos/1", headers=alice),
        client.get("/api/users/", headers=alice),
    ]
    tag = responses[1].headers["ETag"]
    responses.append(client.get("/api/todos/3", headers={**alice, "If-None-Match": tag}))
    assert [response.status_code for response in responses] == [200, 200, 201, 204, 404, 403, 304]
    for response in responses:
        assert_security_headers(response)


def test_a_locked_login_has_the_security_headers(database_url: str) -> None:
    with TestClient(create_app(make_settings(database_url, reset_db=False, login_max_failures=1))) as client:
        client.post("/api/auth/token", data={"username": ALICE[0], "password": "wrong"})
        response = client.post("/api/auth/token", data=token_form())
        assert response.status_code == 429
        assert_security_headers(response)


# Cache-Control: no-store


@pytest.mark.parametrize("grant", ["password", "refresh_token"])
def test_token_responses_are_not_stored(client: TestClient, grant: str) -> None:
    response = client.post("/api/auth/token", data=token_form())
    if grant == "refresh_token":
        refresh_token = response.json()["refresh_token"]
        response = client.post("/api/auth/token", data={"grant_type": grant, "refresh_token": refresh_token})
    assert response.status_code == 200, response.text
    assert no_store(response), response.headers


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        pytest.param("GET", "/api/auth/me", None, 200, id="me"),
        pytest.param("GET", "/api/todos/", None, 200, id="list"),
        pytest.param("GET", "/api/todos/3", None, 200, id="get"),
        pytest.param("POST", "/api/todos/", {"text": "x"}, 201, id="create"),
        pytest.param("PATCH", "/api/todos/3", {"text": "x"}, 200, id="patch"),
        pytest.param("DELETE", "/api/todos/3", None, 204, id="delete"),
        pytest.param("GET", "/api/users/2", None, 200, id="user"),
        pytest.param("PATCH", "/api/users/me", {"fname": "A"}, 200, id="patch-me"),
        pytest.param("GET", "/api/todos/1", None, 404, id="404"),
        pytest.param("GET", "/api/users/", None, 403, id="403"),
        pytest.param("GET", "/api/todos/", {"limit": 0}, 422, id="422"),
        pytest.param("GET", "/", None, 200, id="public-path-with-credentials"),
    ],
)
def test_answers_to_requests_with_credentials_are_not_stored(
    client: TestClient, alice: dict[str, str], method: str, path: str, body: object, status: int
) -> None:
    if status == 422:
        response = client.request(method, path, params=body, headers=alice)  # type: ignore[arg-type]
    else:
        response = client.request(method, path, json=body, headers=alice)
    assert response.status_code == status, response.text
    assert no_store(response), response.headers


@pytest.mark.parametrize(
    "authorization",
    [pytest.param("Bearer garbage", id="bad-bearer"), pytest.param("Basic YWxpY2U6c2VjcmV0Mg==", id="basic")],
)
def test_answers_to_requests_with_rejected_credentials_are_not_stored(client: TestClient, authorization: str) -> None:
    response = client.get("/api/todos/", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert no_store(response), response.headers


def test_the_304_to_a_request_with_credentials_is_not_stored(client: TestClient, alice: dict[str, str]) -> None:
    tag = client.get("/api/todos/3", headers=alice).headers["ETag"]
    response = client.get("/api/todos/3", headers={**alice, "If-None-Match": tag})
    assert response.status_code == 304
    assert no_store(response), response.headers


# CORS


@pytest.fixture
def cors_client(database_url: str, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    origins: tuple[str, ...] = getattr(request, "param", (ORIGIN, "http://localhost:3000"))
    with TestClient(create_app(make_settings(database_url, reset_db=False, cors_origins=origins))) as test_client:
        yield test_client


def preflight(client: TestClient, path: str, method: str, origin: str, headers: str = "authorization") -> Any:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def listed(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        pytest.param("/api/auth/token", "POST", "content-type", id="token"),
        pytest.param("/api/todos/", "GET", "authorization", id="list"),
        pytest.param("/api/todos/", "POST", "authorization, content-type", id="create"),
        pytest.param("/api/todos/", "POST", "authorization, content-type, idempotency-key", id="create-retried"),
        pytest.param("/api/users/signup", "POST", "content-type, idempotency-key", id="signup-retried"),
        pytest.param("/api/todos/3", "GET", "authorization, if-none-match", id="get-if-none-match"),
        pytest.param("/api/todos/3", "PUT", "authorization, content-type, if-match", id="put-if-match"),
        pytest.param("/api/todos/3", "PATCH", "authorization, content-type, if-match", id="patch-if-match"),
        pytest.param("/api/todos/3", "DELETE", "authorization, if-match", id="delete-if-match"),
        pytest.param("/api/users/me", "DELETE", "authorization", id="delete-me"),
        pytest.param("/api/auth/logout", "POST", "authorization, content-type", id="logout"),
    ],
)
def test_a_preflight_from_an_allowed_origin_is_answered(
    cors_client: TestClient, path: str, method: str, headers: str
) -> None:
    response = preflight(cors_client, path, method, ORIGIN, headers)
    assert response.status_code in (200, 204), response.text
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert method.lower() in listed(response.headers["Access-Control-Allow-Methods"])
    assert listed(headers) <= listed(response.headers["Access-Control-Allow-Headers"])
    assert response.headers.get("Access-Control-Allow-Origin") != "*"
    assert_security_headers(response)


def test_a_cross_origin_request_from_an_allowed_origin_can_read_what_it_needs(cors_client: TestClient) -> None:
    """A browser client must be able to read X-Total-Count, Link, Location and ETag (for If-Match)."""
    alice = login(cors_client, *ALICE)
    listing = cors_client.get("/api/todos/", headers={**alice, "Origin": ORIGIN})
    assert listing.status_code == 200
    assert listing.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "origin" in listed(listing.headers.get("Vary", ""))
    exposed = listed(listing.headers.get("Access-Control-Expose-Headers", ""))
    assert {"x-total-count", "link", "location", "etag", "idempotent-replayed"} <= exposed, exposed


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("https://evil.example.net", id="other-site"),
        pytest.param("http://app.example.com", id="other-scheme"),
        pytest.param("https://app.example.com.evil.example.net", id="suffix-trick"),
        pytest.param("https://evil-app.example.com", id="lookalike"),
        pytest.param("https://app.example.com:8443", id="other-port"),
        pytest.param("null", id="null-origin"),
    ],
)
def test_a_disallowed_origin_gets_no_allow_origin(cors_client: TestClient, origin: str) -> None:
    response = preflight(cors_client, "/api/todos/", "POST", origin, "authorization, content-type")
    assert "Access-Control-Allow-Origin" not in response.headers
    alice = login(cors_client, *ALICE)
    simple = cors_client.get("/api/todos/", headers={**alice, "Origin": origin})
    assert simple.status_code == 200
    assert "Access-Control-Allow-Origin" not in simple.headers


def test_a_refused_preflight_is_still_a_json_error(cors_client: TestClient) -> None:
    """docs: API, "Errors": every error is JSON."""
    response = preflight(cors_client, "/api/todos/", "POST", "https://evil.example.net")
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("application/json"), response.text
        assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("cors_client", [pytest.param(("*",), id="wildcard")], indirect=True)
@pytest.mark.parametrize(
    "origin", [pytest.param(ORIGIN, id="some-origin"), pytest.param("https://evil.example.net", id="another")]
)
def test_a_wildcard_never_allows_credentials(cors_client: TestClient, origin: str) -> None:
    answer = preflight(cors_client, "/api/todos/", "POST", origin, "authorization, content-type")
    alice = login(cors_client, *ALICE)
    simple = cors_client.get("/api/todos/", headers={**alice, "Origin": origin, "Cookie": "session=x"})
    for response in (answer, simple):
        assert response.headers.get("Access-Control-Allow-Credentials", "").lower() != "true", response.headers
        assert response.headers.get("Access-Control-Allow-Origin") in ("*", origin, None)


def test_without_cors_origins_no_origin_is_allowed(client: TestClient) -> None:
    response = preflight(client, "/api/todos/", "GET", ORIGIN)
    assert "Access-Control-Allow-Origin" not in response.headers
    simple = client.get("/", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in simple.headers
