"""The OWASP API Security Top 10 (2023), one named test per risk that applies, each attacking the
live app the way the risk describes (docs: Security).

Risks that do not apply, and so have no test:

- API7 Server Side Request Forgery: the API never fetches a URL a client supplies. No field of
  any request is a URL, there are no webhooks, imports or previews; the only outbound
  connection the service makes is to its own database, whose address comes from its settings.
- API10 Unsafe Consumption of APIs: the service consumes no third-party API. Its only upstream
  is its own database; Swagger UI's assets are bundled and served by the app itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from asgi_todo.app import create_app

from .helpers import ALICE, JOHN, alg_none, bearer, forge, grant, login, make_settings, refresh_grant

TOKEN = "/api/auth/token"
TODOS = "/api/todos/"
USER_KEYS = {"id", "email", "fname", "lname", "is_superuser", "created_at", "updated_at"}
INTERNALS = ("Traceback", 'File "', "site-packages", "sqlalchemy", "psycopg", "sqlite3", "starlette", "pydantic")
REPO = Path(__file__).resolve().parent.parent


def snapshot(client: TestClient, john: dict[str, str]) -> list[Any]:
    """Everything stored that the superuser can see: every user with their todos."""
    users = client.get("/api/users/", params={"limit": 100}, headers=john)
    assert users.status_code == 200
    return [client.get(f"/api/users/{user['id']}", headers=john).json() for user in users.json()]


def assert_no_internals(response: Any) -> None:
    for marker in INTERNALS:
        assert marker.lower() not in response.text.lower(), (marker, response.text[:500])
    assert "x-powered-by" not in response.headers


# API1:2023 Broken Object Level Authorization


@pytest.mark.parametrize(
    ("method", "body", "extra"),
    [
        pytest.param("GET", None, {}, id="read"),
        pytest.param("PUT", {"text": "hijacked", "completed": True}, {}, id="replace"),
        pytest.param("PATCH", {"text": "hijacked"}, {}, id="patch"),
        pytest.param("DELETE", None, {}, id="delete"),
        pytest.param("PUT", {"text": "hijacked"}, {"If-Match": "*"}, id="replace-if-match-star"),
        pytest.param("GET", None, {"If-None-Match": "*"}, id="read-if-none-match-star"),
    ],
)
def test_api1_broken_object_level_authorization(
    client: TestClient, john: dict[str, str], alice: dict[str, str], method: str, body: object, extra: dict[str, str]
) -> None:
    """Alice walks the ids of John's todos and user: each answer is the unknown id's 404, and
    nothing of John's changes."""
    before = snapshot(client, john)
    unknown = client.request(method, f"{TODOS}9999", json=body, headers={**alice, **extra})
    assert unknown.status_code == 404
    for todo_id in (1, 2):
        response = client.request(method, f"{TODOS}{todo_id}", json=body, headers={**alice, **extra})
        assert (response.status_code, response.json()) == (unknown.status_code, unknown.json())
        assert "ETag" not in response.headers
    if method == "GET":
        mine = client.get("/api/users/1", headers=alice)
        nobody = client.get("/api/users/999", headers=alice)
        assert (mine.status_code, mine.json()) == (nobody.status_code, nobody.json()) == (404, nobody.json())
        assert client.get(TODOS, params={"user_id": 1}, headers=alice).status_code == 403
        assert "johndoe" not in client.get(TODOS, params={"limit": 100}, headers=alice).text
    if method == "PUT":  # the superuser reads anyone's todos, but changes only his own
        assert client.put(f"{TODOS}3", json={"text": "by john"}, headers=john).status_code == 404
    johns = grant(client, *JOHN)
    logout = client.post("/api/auth/logout", json={"refresh_token": johns["refresh_token"]}, headers=alice)
    assert logout.status_code == 204
    assert refresh_grant(client, johns["refresh_token"]).status_code == 200  # John's login is not Alice's to end
    assert snapshot(client, john) == before


# API2:2023 Broken Authentication


FORGED_TOKENS: dict[str, Callable[[], str]] = {
    "alg-none": alg_none,
    "guessed-key": lambda: forge(key="secret" * 6),
    "default-key": lambda: forge(key="changeme-changeme-changeme-changeme"),
    "expired": lambda: forge(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
    "far-future-wrong-key": lambda: forge(exp=int(time.time()) + 10**9, key="x" * 40),
    "superuser-claim": lambda: forge(key="y" * 40, is_superuser=True, sub="2"),
}


def test_api2_broken_authentication(client: TestClient) -> None:
    """Forged, unsigned and expired tokens; credential stuffing; account enumeration;
    credentials in URLs; stolen refresh tokens; sessions that outlive a password change."""
    for name, token in FORGED_TOKENS.items():
        forged = client.get("/api/users/", headers=bearer(token()))
        assert forged.status_code == 401, name
        assert forged.headers["WWW-Authenticate"].startswith("Bearer"), name

    # Tokens and credentials in the URL (they end up in logs and Referer headers) are ignored.
    access = grant(client, *ALICE)["access_token"]
    assert client.get(TODOS, params={"access_token": access}).status_code == 401
    in_query = client.post(TOKEN, params={"username": ALICE[0], "password": ALICE[1]})
    assert in_query.status_code == 422
    assert "access_token" not in in_query.text

    # The same answer for a wrong password and for an account that does not exist.
    wrong = client.post(TOKEN, data={"username": ALICE[0], "password": "guess-1"})
    missing = client.post(TOKEN, data={"username": "nobody@example.com", "password": "guess-1"})
    assert (wrong.status_code, wrong.json()) == (missing.status_code, missing.json()) == (401, wrong.json())

    # Credential stuffing: five guesses, then even the right password waits.
    for guess in range(2, 6):
        assert client.post(TOKEN, data={"username": ALICE[0], "password": f"guess-{guess}"}).status_code == 401
    locked = client.post(TOKEN, data={"username": ALICE[0], "password": ALICE[1]})
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) >= 1

    # A stolen refresh token, once replayed, is worthless to the thief and to the victim.
    johns = grant(client, *JOHN)
    victim = refresh_grant(client, johns["refresh_token"]).json()
    assert refresh_grant(client, johns["refresh_token"]).status_code == 400  # the thief replays it
    assert refresh_grant(client, victim["refresh_token"]).status_code == 400

    # The replay ended that login: its access tokens are worthless at once, too.
    assert client.get("/api/auth/me", headers=bearer(victim["access_token"])).status_code == 401
    assert client.get("/api/auth/me", headers=bearer(johns["access_token"])).status_code == 401

    # A password change ends the sessions a thief may hold.
    stolen = bearer(grant(client, *JOHN)["access_token"])
    change = {"current_password": JOHN[1], "new_password": "n3w-Passw0rd"}
    own = bearer(grant(client, *JOHN)["access_token"])
    assert client.post("/api/users/me/password", json=change, headers=own).status_code == 204
    assert client.get("/api/auth/me", headers=stolen).status_code == 401


# API3:2023 Broken Object Property Level Authorization


def _responses_of_every_read(client: TestClient, john: dict[str, str], alice: dict[str, str]) -> list[Any]:
    return [
        client.post(TOKEN, data={"username": ALICE[0], "password": ALICE[1]}),
        client.get("/api/auth/me", headers=alice),
        client.get("/api/users/", headers=john),
        client.get("/api/users/1", headers=john),
        client.get("/api/users/2", headers=alice),
        client.get(TODOS, headers=john),
        client.get(f"{TODOS}3", headers=alice),
        client.get(f"{TODOS}1", headers=john),
        client.patch("/api/users/me", json={"fname": "Alice"}, headers=alice),
        client.get("/openapi.json"),
    ]


def test_api3_broken_object_property_level_authorization(
    client: TestClient, john: dict[str, str], alice: dict[str, str]
) -> None:
    """Mass assignment of server-owned properties, and properties no client may read."""
    old = "2000-01-01T00:00:00+00:00"
    signup = client.post(
        "/api/users/signup",
        json={
            "email": "mallory@example.com",
            "password": "mallory-Passw0rd",
            "is_superuser": True,
            "id": 1,
            "created_at": old,
            "hashed_password": "$2b$04$" + "x" * 53,
            "token_version": 99,
        },
    )
    assert signup.status_code == 201, signup.text
    assert signup.json()["is_superuser"] is False
    assert signup.json()["id"] != 1
    assert not signup.json()["created_at"].startswith("2000")
    mallory = login(client, "mallory@example.com", "mallory-Passw0rd")
    assert client.get("/api/users/", headers=mallory).status_code == 403

    patched = client.patch(
        "/api/users/me", json={"is_superuser": True, "email": JOHN[0], "id": 1, "created_at": old}, headers=alice
    )
    assert patched.status_code == 200
    assert (patched.json()["id"], patched.json()["email"], patched.json()["is_superuser"]) == (2, ALICE[0], False)
    assert client.get("/api/users/", headers=alice).status_code == 403

    created = client.post(TODOS, json={"text": "mine", "owner_id": 1, "id": 1, "created_at": old}, headers=alice)
    assert (created.status_code, created.json()["owner_id"]) == (201, 2)
    assert created.json()["id"] != 1
    for method in ("PUT", "PATCH"):
        moved = client.request(method, f"{TODOS}3", json={"text": "moved", "owner_id": 1}, headers=alice)
        assert (moved.status_code, moved.json()["owner_id"]) == (200, 2)
    assert client.put(f"{TODOS}3", json={"text": "renumbered", "id": 1}, headers=alice).status_code == 422
    assert client.get(f"{TODOS}1", headers=john).json()["text"] != "renumbered"

    for response in _responses_of_every_read(client, john, alice):
        assert response.status_code == 200, response.text
        text = response.text
        assert "hashed_password" not in text
        assert "token_version" not in text
        for prefix in ("$2b$", "$2a$", "$2y$"):
            assert prefix not in text
    nested = client.get(f"{TODOS}3", headers=alice).json()["owner"]
    assert nested.keys() == USER_KEYS


# API4:2023 Unrestricted Resource Consumption


def _nested_json(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "statuses"),
    [
        pytest.param("POST", TODOS, {"content": b'{"text": "' + b"a" * 2_000_000 + b'"}'}, {413}, id="2-MB-body"),
        pytest.param("POST", TODOS, {"json": {"text": "a" * 1001}}, {422}, id="text-over-1000"),
        pytest.param("PATCH", "/api/users/me", {"json": {"fname": "a" * 100_000}}, {422}, id="name-of-100k"),
        pytest.param("GET", TODOS, {"params": {"limit": 1_000_000}}, {422}, id="limit-a-million"),
        pytest.param("GET", TODOS, {"params": {"limit": 101}}, {422}, id="limit-101"),
        pytest.param("GET", "/api/users/", {"params": {"limit": 10**6}}, {422}, id="users-limit-a-million"),
        pytest.param("GET", TODOS, {"params": {"offset": 2**63}}, {422}, id="offset-int64"),
        pytest.param("POST", TODOS, {"content": _nested_json(100_000)}, {422}, id="json-nested-100k-deep"),
        pytest.param("GET", TODOS, {"params": [("completed", "true")] * 2000}, {200, 422}, id="2000-query-params"),
        pytest.param(
            "POST", TOKEN, {"data": {f"field{index}": "x" for index in range(5000)}}, {413, 422}, id="5000-form-fields"
        ),
        pytest.param(
            "POST",
            TOKEN,
            {"data": {"username": ALICE[0], "password": "p" * 500_000}},
            {401, 413, 422},
            id="huge-password",
        ),
    ],
)
def test_api4_unrestricted_resource_consumption(
    client: TestClient,
    john: dict[str, str],
    alice: dict[str, str],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    statuses: set[int],
) -> None:
    """Oversized bodies, unbounded pages and strings, pathological JSON, floods of fields:
    each is refused with a 4xx, quickly, and nothing is stored."""
    before = snapshot(client, john)
    headers = {**alice, **({"Content-Type": "application/json"} if "content" in kwargs else {})}
    started = time.monotonic()
    response = client.request(method, path, headers=headers, **kwargs)
    assert time.monotonic() - started < 5
    assert response.status_code in statuses, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    assert len(response.content) < 10_000
    assert snapshot(client, john) == before
    full_page = client.get(TODOS, params={"limit": 100}, headers=john)
    assert len(full_page.json()) <= 100


def test_api4_brute_force_is_throttled(client: TestClient) -> None:
    for index in range(5):
        assert client.post(TOKEN, data={"username": ALICE[0], "password": f"guess-{index}"}).status_code == 401
    for index in range(20):  # the flood goes on: every attempt is refused before any bcrypt work
        response = client.post(TOKEN, data={"username": ALICE[0], "password": f"more-{index}"})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1


# API5:2023 Broken Function Level Authorization


@pytest.mark.parametrize(
    ("method", "path", "extra", "expected"),
    [
        pytest.param("GET", "/api/users/", {}, 403, id="list-users"),
        pytest.param("GET", "/api/users", {}, 403, id="list-users-no-slash"),
        pytest.param("GET", "/api/users/?limit=100&offset=0", {}, 403, id="list-users-with-query"),
        pytest.param("DELETE", "/api/users/1", {}, 405, id="delete-another-user"),
        pytest.param("PUT", "/api/users/1", {}, 405, id="replace-another-user"),
        pytest.param("PATCH", "/api/users/1", {}, 405, id="patch-another-user"),
        pytest.param("POST", "/api/users/", {}, 405, id="create-user-as-admin"),
        pytest.param("POST", f"{TODOS}1", {"X-HTTP-Method-Override": "DELETE"}, 405, id="method-override-header"),
        pytest.param("GET", f"{TODOS}?user_id=1", {}, 403, id="list-someone-elses-todos"),
    ],
)
def test_api5_broken_function_level_authorization(
    client: TestClient,
    john: dict[str, str],
    alice: dict[str, str],
    method: str,
    path: str,
    extra: dict[str, str],
    expected: int,
) -> None:
    """An ordinary user calls the superuser's functions, and functions that do not exist."""
    before = snapshot(client, john)
    response = client.request(method, path, json={"is_superuser": True}, headers={**alice, **extra})
    assert response.status_code == expected, response.text
    assert isinstance(response.json()["detail"], str)
    assert "johndoe" not in response.text
    assert client.request(method, path, json={"is_superuser": True}).status_code in (401, 405)
    assert snapshot(client, john) == before
    assert client.get("/api/users/", headers=john).status_code == 200


# API6:2023 Unrestricted Access to Sensitive Business Flows


def test_api6_unrestricted_access_to_sensitive_business_flows(
    client: TestClient, john: dict[str, str], alice: dict[str, str]
) -> None:
    """Sign-up never makes a superuser or takes over an account; a stolen access token alone
    can neither change the password nor guess it through the password-change flow."""
    for email in (JOHN[0], JOHN[0].upper(), f" {JOHN[0]}"):
        taken = client.post("/api/users/signup", json={"email": email, "password": "takeover-Passw0rd"})
        assert taken.status_code in (409, 422), taken.text
    assert client.post(TOKEN, data={"username": JOHN[0], "password": "takeover-Passw0rd"}).status_code == 401
    login(client, *JOHN)

    superuser = client.post(
        "/api/users/signup", json={"email": "eve@example.com", "password": "eve-Passw0rd!", "is_superuser": True}
    )
    assert (superuser.status_code, superuser.json()["is_superuser"]) == (201, False)
    assert [user["is_superuser"] for user in client.get("/api/users/", headers=john).json()] == [True, False, False]

    without_current = {"new_password": "stolen-Passw0rd"}
    assert client.post("/api/users/me/password", json=without_current, headers=alice).status_code == 422
    for guess in range(5):
        body = {"current_password": f"guess-{guess}", "new_password": "stolen-Passw0rd"}
        assert client.post("/api/users/me/password", json=body, headers=alice).status_code == 403
    body = {"current_password": ALICE[1], "new_password": "stolen-Passw0rd"}
    assert client.post("/api/users/me/password", json=body, headers=alice).status_code == 429
    assert client.post(TOKEN, data={"username": ALICE[0], "password": "stolen-Passw0rd"}).status_code in (401, 429)


# API8:2023 Security Misconfiguration


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        pytest.param("GET", "/nope", {}, 404, id="404"),
        pytest.param("TRACE", TODOS, {}, 405, id="trace"),
        pytest.param("DELETE", "/", {}, 405, id="405"),
        pytest.param("POST", TODOS, {"content": b'{"text": '}, 422, id="malformed-json"),
        pytest.param("POST", TODOS, {"content": b'{"text": "\\ud800"}'}, 422, id="lone-surrogate"),
        pytest.param("POST", TODOS, {"content": b"\xff\xfe\x00"}, 422, id="not-utf8"),
        pytest.param("GET", f"{TODOS}99999999999999999999", {}, 422, id="huge-id"),
        pytest.param("GET", TODOS, {"params": {"limit": "1e999"}}, 422, id="float-overflow"),
        pytest.param("POST", TODOS, {"content": b"x", "headers": {"Content-Type": "text/xml"}}, 415, id="xml"),
    ],
)
def test_api8_security_misconfiguration(
    client: TestClient, alice: dict[str, str], method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    """Errors are terse JSON without stack traces, versions or echoed secrets, on responses
    with the hardening headers; TRACE is not served."""
    kwargs = dict(kwargs)
    headers = {**alice, "Content-Type": "application/json", **kwargs.pop("headers", {})}
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str | list)
    assert_no_internals(response)
    assert alice["Authorization"].split()[1] not in response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Referrer-Policy" in response.headers
    if status == 405:
        assert response.headers["Allow"]
        assert "TRACE" not in response.headers["Allow"]


def test_api8_wildcard_cors_never_allows_credentials(database_url: str) -> None:
    with TestClient(create_app(make_settings(database_url, reset_db=False, cors_origins=("*",)))) as client:
        alice = login(client, *ALICE)
        origin = {"Origin": "https://evil.example.net"}
        preflight = client.options(
            TODOS,
            headers={
                **origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        simple = client.get(TODOS, headers={**alice, **origin})
        for response in (preflight, simple):
            assert response.headers.get("Access-Control-Allow-Credentials", "").lower() != "true"
        assert client.get("/docs").headers["Content-Security-Policy"]


# API9:2023 Improper Inventory Management


DOCUMENTATION_PATHS = ("/openapi.json", "/docs", "/redoc")  # the inventory itself; /docs/..., /redoc/...: assets
DOCUMENTATION_ASSETS = ("/docs/", "/redoc/")
# Prometheus' endpoint is for operators, not clients (docs: Operations, "Metrics and traces"): not in the
# document, and a 404 for everyone outside METRICS_ALLOW_IPS (the probes below check that).
OPERATOR_PATHS = ("/metrics",)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
UNLISTED_PROBES = ("/admin", "/api/v1/todos/", "/api/v2/users/", "/api/debug", "/api/internal", "/.env", "/metrics")


def _concrete(path: str) -> str:
    return path.replace("{id}", "1")


def test_api9_improper_inventory_management(app: object, client: TestClient) -> None:
    """Every route the app serves is in its OpenAPI document (the checked-in copy included),
    every documented operation answers, and nothing undocumented does."""
    document = client.get("/openapi.json").json()
    paths: dict[str, dict[str, Any]] = document["paths"]
    assert json.loads((REPO / "openapi" / "openapi.json").read_text()) == document

    assert isinstance(app, Starlette)
    for route in app.routes:
        if isinstance(route, Mount):
            assert route.path.startswith(DOCUMENTATION_ASSETS), route.path
            continue
        assert isinstance(route, Route), route
        if route.path in (*DOCUMENTATION_PATHS, *OPERATOR_PATHS) or route.path.startswith(DOCUMENTATION_ASSETS):
            continue
        assert route.path in paths or route.path + "/" in paths, f"undocumented route {route.path}"

    for path, operations in paths.items():
        documented = {method.upper() for method in operations if method.upper() in METHODS}
        for method in METHODS:
            response = client.request(method, _concrete(path))  # no credentials: nothing changes
            if method in documented:
                statuses = operations[method.lower()]["responses"]
                assert str(response.status_code) in statuses, (method, path, response.text)
            else:
                assert response.status_code == 405, (method, path, response.status_code)
                allowed = {name.strip() for name in response.headers["Allow"].split(",")} - {"HEAD", "OPTIONS"}
                assert allowed == documented, (path, allowed)

    for probe in UNLISTED_PROBES:
        assert client.get(probe).status_code == 404, probe

    assert document["info"]["version"] == client.get("/health").json()["version"]


@pytest.mark.parametrize(
    ("path", "method", "header"),
    [
        pytest.param("/api/todos/{id}", "get", "If-None-Match", id="get-if-none-match"),
        pytest.param("/api/todos/{id}", "put", "If-Match", id="put-if-match"),
        pytest.param("/api/todos/{id}", "patch", "If-Match", id="patch-if-match"),
        pytest.param("/api/todos/{id}", "delete", "If-Match", id="delete-if-match"),
    ],
)
def test_api9_conditional_request_headers_are_documented(
    client: TestClient, path: str, method: str, header: str
) -> None:
    """The document lists what an operation reads, request headers included, so that clients
    and gateways built from it know about them."""
    operation = client.get("/openapi.json").json()["paths"][path][method]
    names = {parameter["name"].lower() for parameter in operation.get("parameters", ()) if parameter["in"] == "header"}
    assert header.lower() in names, operation.get("parameters")
