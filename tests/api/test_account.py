"""The caller's own account (docs: API, "Endpoints"; Security, "Passwords"): names, password
change, deletion; and what each does to the tokens issued before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo.models import LoginFailures
from asgi_todo.settings import Settings
from tests.helpers import ALICE, JOHN, assert_401, assert_invalid_grant, bearer, grant, login, utc

ME = "/api/users/me"
PASSWORD = "/api/users/me/password"
TOKEN = "/api/auth/token"
USER_KEYS = {"id", "email", "fname", "lname", "is_superuser", "created_at", "updated_at"}
INVALID = {"detail": "Invalid authentication credentials"}
WRONG_LOGIN = {"detail": "Incorrect email or password"}
WRONG_CURRENT = {"detail": "Current password is incorrect"}
NEW_PASSWORD = "a-new-Passw0rd"


def me(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get("/api/auth/me", headers=headers)
    assert response.status_code == 200, response.text
    user: dict[str, Any] = response.json()
    return user


def refresh(client: TestClient, token: dict[str, Any]) -> Any:
    return client.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})


def change_password(client: TestClient, headers: dict[str, str], current: str, new: str = NEW_PASSWORD) -> Any:
    return client.post(PASSWORD, json={"current_password": current, "new_password": new}, headers=headers)


# Names


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"fname": "Alice"}, id="fname-only"),
        pytest.param({"lname": "Liddell"}, id="lname-only"),
        pytest.param({"fname": "Alice", "lname": "Liddell"}, id="both"),
        pytest.param({"fname": "", "lname": ""}, id="empty-strings"),
        pytest.param({"fname": "Zoë", "lname": "Ødegård-李"}, id="non-ascii"),
    ],
)
def test_patch_me_changes_only_the_fields_sent(
    client: TestClient, alice: dict[str, str], change: dict[str, str]
) -> None:
    assert client.patch(ME, json={"fname": "Old first", "lname": "Old last"}, headers=alice).status_code == 200
    before = me(client, alice)
    response = client.patch(ME, json=change, headers=alice)
    assert response.status_code == 200, response.text
    user = response.json()
    assert user.keys() == USER_KEYS
    assert {**user, "updated_at": None} == {**before, **change, "updated_at": None}
    assert utc(user["updated_at"]) >= utc(before["updated_at"])
    assert me(client, alice) == user


def test_patch_me_with_an_empty_body_changes_nothing(client: TestClient, alice: dict[str, str]) -> None:
    before = me(client, alice)
    response = client.patch(ME, json={}, headers=alice)
    assert response.status_code == 200, response.text
    assert {**response.json(), "updated_at": None} == {**before, "updated_at": None}


def test_patch_me_ignores_server_owned_fields(client: TestClient, alice: dict[str, str]) -> None:
    old = "2000-01-01T00:00:00+00:00"
    body = {
        "fname": "Alice",
        "id": 1,
        "email": "johndoe@example.com",
        "is_superuser": True,
        "hashed_password": "$2b$04$" + "x" * 53,
        "password": "hijacked-password",
        "created_at": old,
    }
    response = client.patch(ME, json=body, headers=alice)
    assert response.status_code == 200, response.text
    user = response.json()
    assert (user["id"], user["email"], user["is_superuser"], user["fname"]) == (2, ALICE[0], False, "Alice")
    assert utc(user["created_at"]).year > 2000
    assert me(client, alice) == user
    assert client.get("/api/users/", headers=alice).status_code == 403
    login(client, *ALICE)
    assert client.post(TOKEN, data={"username": ALICE[0], "password": "hijacked-password"}).status_code == 401
    assert me(client, login(client, *JOHN))["email"] == JOHN[0]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param({"fname": None}, ["body", "fname"], id="null-fname"),
        pytest.param({"lname": None}, ["body", "lname"], id="null-lname"),
        pytest.param({"fname": "ok", "lname": None}, ["body", "lname"], id="one-null"),
        pytest.param({"fname": 5}, ["body", "fname"], id="number"),
        pytest.param({"fname": ["a"]}, ["body", "fname"], id="list"),
    ],
)
def test_patch_me_rejects_invalid_fields_and_changes_nothing(
    client: TestClient, alice: dict[str, str], body: dict[str, object], loc: list[str]
) -> None:
    before = me(client, alice)
    response = client.patch(ME, json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]]
    assert me(client, alice) == before


@pytest.mark.parametrize(
    "content",
    [pytest.param(b"[]", id="array"), pytest.param(b'"x"', id="string"), pytest.param(b"{", id="malformed")],
)
def test_patch_me_with_a_body_that_is_not_an_object_is_422(
    client: TestClient, alice: dict[str, str], content: bytes
) -> None:
    before = me(client, alice)
    response = client.patch(ME, content=content, headers={**alice, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert me(client, alice) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("PATCH", ME, {"fname": "x"}, id="patch-me"),
        pytest.param("DELETE", ME, None, id="delete-me"),
        pytest.param("POST", PASSWORD, {"current_password": "secret2", "new_password": NEW_PASSWORD}, id="password"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [pytest.param({}, id="no-token"), pytest.param({"Authorization": "Bearer garbage"}, id="bad-token")],
)
def test_account_endpoints_need_a_token(
    client: TestClient, john: dict[str, str], method: str, path: str, body: object, headers: dict[str, str]
) -> None:
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/users/?count=true", headers=john).headers["X-Total-Count"] == "2"
    login(client, *ALICE)


# Password


def test_password_change_is_204_and_the_new_password_logs_in(client: TestClient, alice: dict[str, str]) -> None:
    response = change_password(client, alice, ALICE[1])
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert me(client, login(client, ALICE[0], NEW_PASSWORD))["id"] == 2
    assert_401(client.post(TOKEN, data={"username": ALICE[0], "password": ALICE[1]}), WRONG_LOGIN)


def test_password_change_ends_every_earlier_session(client: TestClient) -> None:
    phone = grant(client, *ALICE)
    laptop = grant(client, *ALICE)
    rotated = refresh(client, laptop).json()
    johns = grant(client, *JOHN)
    assert change_password(client, bearer(phone), ALICE[1]).status_code == 204
    for token in (phone, laptop, rotated):
        assert_401(client.get("/api/auth/me", headers=bearer(token)), INVALID)
        assert_401(client.get("/api/todos/", headers=bearer(token)), INVALID)
        assert_invalid_grant(refresh(client, token))
    fresh = grant(client, ALICE[0], NEW_PASSWORD)
    assert me(client, bearer(fresh))["id"] == 2
    assert refresh(client, fresh).status_code == 200
    assert me(client, bearer(johns))["id"] == 1  # other users are untouched
    assert refresh(client, johns).status_code == 200


def test_wrong_current_password_is_403_and_changes_nothing(client: TestClient, alice: dict[str, str]) -> None:
    response = change_password(client, alice, "not-the-password")
    assert response.status_code == 403
    assert response.json() == WRONG_CURRENT
    assert me(client, alice)["id"] == 2  # the token still works
    login(client, *ALICE)
    assert client.post(TOKEN, data={"username": ALICE[0], "password": NEW_PASSWORD}).status_code == 401


def test_wrong_current_passwords_count_as_login_failures(
    client: TestClient, alice: dict[str, str], settings: Settings
) -> None:
    for _ in range(5):  # login_max_failures
        assert change_password(client, alice, "not-the-password").json() == WRONG_CURRENT
    locked = change_password(client, alice, ALICE[1])
    assert locked.status_code == 429, locked.text
    assert int(locked.headers["Retry-After"]) >= 1
    assert isinstance(locked.json()["detail"], str)
    login_attempt = client.post(TOKEN, data={"username": ALICE[0], "password": ALICE[1]})
    assert login_attempt.status_code == 429, login_attempt.text
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.begin() as connection:  # let the lock end: the password never changed
            connection.execute(sa.update(LoginFailures).values(locked_until=datetime.now(UTC) - timedelta(seconds=1)))
    finally:
        engine.dispose()
    assert me(client, login(client, *ALICE))["id"] == 2


@pytest.mark.parametrize(
    "new",
    [
        pytest.param("12345678", id="8-chars"),
        pytest.param("é" * 36, id="72-bytes-multibyte"),
        pytest.param("p" * 128, id="128-chars"),
    ],
)
def test_new_password_of_8_to_128_characters_is_accepted(client: TestClient, alice: dict[str, str], new: str) -> None:
    assert change_password(client, alice, ALICE[1], new).status_code == 204
    login(client, ALICE[0], new)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param({"current_password": "secret2", "new_password": "1234567"}, "new_password", id="7-bytes"),
        pytest.param({"current_password": "secret2", "new_password": "p" * 129}, "new_password", id="129-chars"),
        pytest.param({"current_password": "secret2", "new_password": "😀" * 7}, "new_password", id="28-bytes-7-chars"),
        pytest.param({"current_password": "secret2", "new_password": "new\x00password"}, "new_password", id="nul"),
        pytest.param({"current_password": "secret2", "new_password": None}, "new_password", id="null-new"),
        pytest.param({"current_password": "secret2"}, "new_password", id="missing-new"),
        pytest.param({"new_password": NEW_PASSWORD}, "current_password", id="missing-current"),
        pytest.param({"current_password": None, "new_password": NEW_PASSWORD}, "current_password", id="null-current"),
    ],
)
def test_invalid_password_change_is_422_and_changes_nothing(
    client: TestClient, alice: dict[str, str], body: dict[str, object], loc: str
) -> None:
    response = client.post(PASSWORD, json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert ["body", loc] in [error["loc"] for error in response.json()["detail"]]
    for value in body.values():
        if isinstance(value, str):
            assert value not in response.text  # never echo a password
    assert me(client, alice)["id"] == 2
    login(client, *ALICE)


# Deletion


def rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql))]
    finally:
        engine.dispose()


def test_delete_me_removes_the_user_and_their_todos(
    client: TestClient, alice: dict[str, str], john: dict[str, str], settings: Settings
) -> None:
    response = client.delete(ME, headers=alice)
    assert response.status_code == 204
    assert response.content == b""
    assert client.get("/api/users/2", headers=john).status_code == 404
    for todo_id in (3, 4):
        assert client.get(f"/api/todos/{todo_id}", headers=john).status_code == 404
    assert [todo["id"] for todo in client.get("/api/todos/", headers=john).json()] == [1, 2]
    assert [user["id"] for user in client.get("/api/users/", headers=john).json()] == [1]
    assert rows(settings, "SELECT id FROM users") == [(1,)]
    assert rows(settings, "SELECT id FROM todos ORDER BY id") == [(1,), (2,)]


def test_delete_me_ends_every_session(client: TestClient, settings: Settings) -> None:
    phone = grant(client, *ALICE)
    laptop = grant(client, *ALICE)
    assert client.delete(ME, headers=bearer(phone)).status_code == 204
    for token in (phone, laptop):
        assert_401(client.get("/api/auth/me", headers=bearer(token)), INVALID)
        assert_401(client.get("/api/todos/", headers=bearer(token)), INVALID)
        assert_401(client.delete(ME, headers=bearer(token)), INVALID)
        assert_invalid_grant(refresh(client, token))
    assert_401(client.post(TOKEN, data={"username": ALICE[0], "password": ALICE[1]}), WRONG_LOGIN)


def test_a_deleted_email_can_sign_up_again_with_nothing_of_the_old_account(
    client: TestClient, alice: dict[str, str]
) -> None:
    assert client.delete(ME, headers=alice).status_code == 204
    signup = client.post("/api/users/signup", json={"email": ALICE[0], "password": NEW_PASSWORD})
    assert signup.status_code == 201, signup.text
    again = login(client, ALICE[0], NEW_PASSWORD)
    assert client.get("/api/todos/", headers=again).json() == []


def test_a_deleted_users_token_never_opens_a_later_account(client: TestClient, alice: dict[str, str]) -> None:
    """A stranger who signs up after the deletion (on SQLite, perhaps under the freed id) must
    not be reachable with the deleted user's still unexpired token."""
    assert client.delete(ME, headers=alice).status_code == 204
    signup = client.post("/api/users/signup", json={"email": "bob@example.com", "password": NEW_PASSWORD})
    assert signup.status_code == 201, signup.text
    assert_401(client.get("/api/auth/me", headers=alice), INVALID)
    assert_401(client.get("/api/todos/", headers=alice), INVALID)
    assert client.post("/api/todos/", json={"text": "planted"}, headers=alice).status_code == 401
    bob = login(client, "bob@example.com", NEW_PASSWORD)
    assert client.get("/api/todos/", headers=bob).json() == []


def test_a_superuser_deleting_himself_leaves_everyone_else(
    client: TestClient, john: dict[str, str], alice: dict[str, str]
) -> None:
    assert client.delete(ME, headers=john).status_code == 204
    assert_401(client.get("/api/auth/me", headers=john), INVALID)
    assert me(client, alice)["id"] == 2
    assert [todo["id"] for todo in client.get("/api/todos/", headers=alice).json()] == [3, 4]
