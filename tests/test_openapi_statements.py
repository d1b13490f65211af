"""What the OpenAPI document tells a client, checked against what the code does: each test
reads the document's statement and then makes the service keep it (docs: API, "Endpoints").
Client generators and Swagger UI readers trust these texts, so a statement that drifts from
the code fails here."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from asgi_todo.api import OPERATIONS
from asgi_todo.openapi import document
from asgi_todo.operations import Auth
from asgi_todo.settings import Settings

from .helpers import ALICE, JOHN, assert_401, assert_invalid_grant, bearer, grant, refresh_grant

TOKEN = "/api/auth/token"
LOGOUT = "/api/auth/logout"
ME = "/api/auth/me"
PASSWORD = "/api/users/me/password"
ME_ACCOUNT = "/api/users/me"
NEW_PASSWORD = "a-new-Passw0rd"


def _operation(settings: Settings, path: str, method: str) -> dict[str, Any]:
    spec: dict[str, Any] = document(settings)["paths"][path][method]
    return spec


def _refused(client: TestClient, token: dict[str, Any]) -> None:
    """Neither half of a token response works any more."""
    assert_401(client.get(ME, headers=bearer(token)), {"detail": "Invalid authentication credentials"})
    assert_invalid_grant(refresh_grant(client, token["refresh_token"]))


def test_login_says_a_reused_refresh_token_ends_its_login_at_once(client: TestClient, settings: Settings) -> None:
    description = _operation(settings, TOKEN, "post")["description"]
    assert "presenting a spent one again is a 400 and ends its login at once" in description
    assert "every access and refresh token of that login stops working" in description
    assert "until they expire" not in description  # what the document said before, wrongly

    first = grant(client, *ALICE)
    second = refresh_grant(client, first["refresh_token"]).json()
    elsewhere = grant(client, *ALICE)  # another login of the same user
    assert client.get(ME, headers=bearer(second)).status_code == 200

    assert_invalid_grant(refresh_grant(client, first["refresh_token"]))  # the replay
    _refused(client, first)
    _refused(client, second)  # the newest pair of that login too, long before it expires
    assert client.get(ME, headers=bearer(elsewhere)).status_code == 200


def test_logout_declares_the_statuses_it_answers(client: TestClient, settings: Settings) -> None:
    spec = _operation(settings, LOGOUT, "post")
    assert set(spec["responses"]) == {"204", "401", "413", "415", "422"}
    assert "Always a 204" not in spec["description"]

    assert_401(client.post(LOGOUT), {"detail": "Not authenticated"})
    headers = bearer(grant(client, *ALICE))
    too_large = b"{" + b" " * settings.max_body_bytes + b"}"
    json_body = {**headers, "Content-Type": "application/json"}
    assert client.post(LOGOUT, content=too_large, headers=json_body).status_code == 413
    assert client.post(LOGOUT, content=b"x", headers={**headers, "Content-Type": "text/plain"}).status_code == 415
    assert client.post(LOGOUT, json={"refresh_token": 5}, headers=headers).status_code == 422
    assert client.get(ME, headers=headers).status_code == 200  # none of those ended the login
    assert client.post(LOGOUT, headers=headers).status_code == 204
    assert client.get(ME, headers=headers).status_code == 401


def test_logout_with_a_token_not_yours_ends_nothing_and_is_still_a_204(client: TestClient, settings: Settings) -> None:
    description = _operation(settings, LOGOUT, "post")["description"]
    assert "A refresh token that is unknown or someone else's ends nothing and is still a 204" in description
    assert "your other logins go on" in description

    alice = grant(client, *ALICE)
    other = grant(client, *ALICE)
    john = grant(client, *JOHN)
    for token in (john["refresh_token"], "not-a-token"):
        response = client.post(LOGOUT, json={"refresh_token": token}, headers=bearer(alice))
        assert response.status_code == 204, response.text
    assert client.get(ME, headers=bearer(john)).status_code == 200
    assert client.get(ME, headers=bearer(alice)).status_code == 200

    assert client.post(LOGOUT, json={"refresh_token": alice["refresh_token"]}, headers=bearer(other)).status_code == 204
    _refused(client, alice)
    assert client.get(ME, headers=bearer(other)).status_code == 200


def test_password_change_says_every_earlier_token_stops_working(client: TestClient, settings: Settings) -> None:
    description = _operation(settings, PASSWORD, "post")["description"]
    assert "Every access and refresh token issued before stops working" in description
    assert "A wrong current password is a 403" in description

    earlier = grant(client, *ALICE)
    current = grant(client, *ALICE)
    wrong = {"current_password": "not-her-password", "new_password": NEW_PASSWORD}
    assert client.post(PASSWORD, json=wrong, headers=bearer(current)).status_code == 403
    right = {"current_password": ALICE[1], "new_password": NEW_PASSWORD}
    assert client.post(PASSWORD, json=right, headers=bearer(current)).status_code == 204
    _refused(client, earlier)
    _refused(client, current)  # the session that changed it too: "log in again"
    assert client.get(ME, headers=bearer(grant(client, ALICE[0], NEW_PASSWORD))).status_code == 200


def test_delete_me_says_its_tokens_stop_working_at_once(client: TestClient, settings: Settings) -> None:
    assert "Your tokens stop working at once" in _operation(settings, ME_ACCOUNT, "delete")["description"]

    first = grant(client, *ALICE)
    second = grant(client, *ALICE)
    assert client.delete(ME_ACCOUNT, headers=bearer(first)).status_code == 204
    _refused(client, first)
    _refused(client, second)


def test_each_tag_names_the_paths_of_its_service_operations(settings: Settings) -> None:
    """The `service` tag lists the probes a platform needs, not just the health check."""
    tags = {tag["name"]: tag["description"] for tag in document(settings)["tags"]}
    for operation in OPERATIONS:
        if not operation.prefixed and operation.path != "/":
            assert f"`{operation.path}`" in tags[operation.tag], (operation.tag, operation.path)


@pytest.mark.parametrize(
    "operation",
    [operation for operation in OPERATIONS if operation.auth is not Auth.NONE],
    ids=lambda operation: operation.name,
)
def test_every_operation_that_needs_a_token_declares_and_answers_401(
    client: TestClient, settings: Settings, operation: Any
) -> None:
    """docs: Architecture, "How a request flows": the token is checked before the path, query
    and body are read, so a request without one is a 401 whatever else is wrong with it."""
    declared = operation.full_path(settings.api_prefix)
    assert "401" in _operation(settings, declared, operation.method.lower())["responses"]
    path = declared.replace("{id}", "not-an-id")
    response = client.request(operation.method, path, content=b"{not json", headers={"Content-Type": "text/plain"})
    assert_401(response, {"detail": "Not authenticated"})
