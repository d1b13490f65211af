"""The users endpoints, checked against the docs (API, "Endpoints"): signup, the superuser's
list, one user with todos."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from tests.api.test_todos import KEYSET_DIFFERS, TODO_KEYS, next_link
from tests.helpers import TOKEN_URL, assert_422, login, utc

pytestmark = pytest.mark.twin  # also run on the benchmark's FastAPI twin

SIGNUP = "/api/users/signup"
USERS = "/api/users/"
USER_KEYS = {"id", "email", "fname", "lname", "is_superuser", "created_at", "updated_at"}


def assert_user(user: dict[str, Any], password: str | None = None) -> None:
    """UserRead exactly: no password or hash field, and never the password itself."""
    assert user.keys() == USER_KEYS, user
    utc(user["created_at"])
    utc(user["updated_at"])
    if password is not None:
        assert password not in str(user)


def signup(client: TestClient, **body: object) -> Any:
    return client.post(SIGNUP, json={"email": "bob@example.com", "password": "correct horse", **body})


# Signup


def test_signup_creates_a_user_who_can_log_in(client: TestClient) -> None:
    response = signup(client, fname="Bob", lname="Builder")
    assert response.status_code == 201, response.text
    user = response.json()
    assert_user(user, "correct horse")
    assert (user["email"], user["fname"], user["lname"], user["is_superuser"]) == (
        "bob@example.com",
        "Bob",
        "Builder",
        False,
    )
    location = response.headers["Location"]
    assert urlsplit(location).path == f"{USERS}{user['id']}"

    bob = login(client, "bob@example.com", "correct horse")
    me = client.get("/api/auth/me", headers=bob)
    assert me.json() == user
    read_back = client.get(location, headers=bob)
    assert read_back.status_code == 200
    assert read_back.json() == {**user, "todos": []}


def test_signup_names_default_to_empty(client: TestClient) -> None:
    response = signup(client)
    assert response.status_code == 201, response.text
    assert (response.json()["fname"], response.json()["lname"]) == ("", "")


def test_signup_ignores_is_superuser_and_other_server_owned_fields(client: TestClient, john: dict[str, str]) -> None:
    old = "2000-01-01T00:00:00+00:00"
    response = signup(client, is_superuser=True, id=99, created_at=old, updated_at=old, hashed_password="x")
    assert response.status_code == 201, response.text
    user = response.json()
    assert_user(user)
    assert user["is_superuser"] is False
    assert user["id"] != 99
    assert utc(user["created_at"]).year > 2000
    bob = login(client, "bob@example.com", "correct horse")
    assert client.get(USERS, headers=bob).status_code == 403
    assert client.get(f"{USERS}{user['id']}", headers=john).json()["is_superuser"] is False


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("alice@example.com", id="demo-user"),
        pytest.param("bob@example.com", id="new-user"),
        # Look-alikes (docs: Security, "Sign-ups"): the same after NFKC normalisation and case folding.
        pytest.param("ALICE@Example.COM", id="upper-case"),
        pytest.param("\uff41lice@example.com", id="fullwidth-a"),
        pytest.param("\uff21LICE@example.com", id="fullwidth-capital-a"),
        pytest.param("alice@\uff45xample.com", id="fullwidth-in-the-domain"),
        pytest.param("b\u2092b@example.com", id="subscript-o"),
        pytest.param("bo\u1d47@example.com", id="modifier-b"),
    ],
)
def test_signup_with_a_registered_email_is_409(client: TestClient, john: dict[str, str], email: str) -> None:
    assert signup(client).status_code == 201
    users_before = client.get(USERS, params={"limit": 100}, headers=john).json()
    response = signup(client, email=email, password="another password")
    assert response.status_code == 409
    assert response.json() == {"detail": "Email already registered."}
    assert client.get(USERS, params={"limit": 100}, headers=john).json() == users_before
    login(client, "alice@example.com", "secret2")  # the old password still works
    login(client, "bob@example.com", "correct horse")


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("not-an-email", id="no-at"),
        pytest.param("bob@", id="no-domain"),
        pytest.param("", id="empty"),
        pytest.param(None, id="null"),
        pytest.param(42, id="number"),
    ],
)
def test_signup_rejects_invalid_email(client: TestClient, email: object) -> None:
    assert_422(signup(client, email=email), ["body", "email"])


def test_signup_requires_email_and_password(client: TestClient) -> None:
    response = client.post(SIGNUP, json={"fname": "Bob"})
    assert_422(response, ["body", "email"])
    assert_422(response, ["body", "password"])


# Passwords (docs: Security, "Passwords"): 8 to 128 characters, counted as characters, without control
# characters; pre-hashed, so every character counts, past bcrypt's 72 bytes too.


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("a" * 8, id="8-chars"),
        pytest.param("é" * 8, id="8-chars-in-16-bytes"),
        pytest.param("a" * 73, id="73-bytes"),
        pytest.param("€" * 25, id="75-bytes-in-25-chars"),
        pytest.param("a" * 128, id="128-chars"),
        pytest.param("😀" * 128, id="128-chars-in-512-bytes"),
        pytest.param("pass word\u2028with separators", id="line-separator-is-no-control"),
    ],
)
def test_signup_accepts_8_to_128_characters_of_password(client: TestClient, password: str) -> None:
    response = signup(client, password=password)
    assert response.status_code == 201, response.text
    assert_user(response.json(), password)
    login(client, "bob@example.com", password)


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("a" * 7, id="7-chars"),
        pytest.param("", id="empty"),
        pytest.param("😀" * 2, id="8-bytes-in-2-chars"),
        pytest.param("é" * 7, id="14-bytes-in-7-chars"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("\x00" * 8, id="nul-only"),
        pytest.param("password\x00", id="trailing-nul"),
        pytest.param("pass\nword!", id="newline"),
        pytest.param("pass\tword!", id="tab"),
        pytest.param("\x1b[31mpassword", id="escape"),
        pytest.param("password\x7f", id="delete"),
        pytest.param("password\x85", id="c1-control"),
    ],
)
def test_signup_rejects_passwords_outside_the_rule(client: TestClient, john: dict[str, str], password: str) -> None:
    response = signup(client, password=password)
    assert_422(response, ["body", "password"])
    emails = [user["email"] for user in client.get(USERS, params={"limit": 100}, headers=john).json()]
    assert "bob@example.com" not in emails


def test_every_character_of_a_long_password_counts(client: TestClient) -> None:
    password = "x" * 100
    assert signup(client, password=password).status_code == 201
    for other in ("x" * 72, "x" * 99 + "y", "x" * 101):
        response = client.post(TOKEN_URL, data={"username": "bob@example.com", "password": other})
        assert response.status_code == 401, other
    login(client, "bob@example.com", password)


def test_the_empty_password_never_logs_in_after_a_nul_sign_up(client: TestClient) -> None:
    signup(client, password="\x00" * 8)
    for password in ("", "\x00" * 8):
        response = client.post(TOKEN_URL, data={"username": "bob@example.com", "password": password})
        assert response.status_code in (401, 422), response.text  # the FastAPI twin requires a password: 422


# List


def test_superuser_lists_users(client: TestClient, john: dict[str, str]) -> None:
    assert signup(client).status_code == 201
    response = client.get(USERS, headers=john)
    assert response.status_code == 200
    users = response.json()
    for user in users:
        assert_user(user)
    assert {user["email"] for user in users} == {"johndoe@example.com", "alice@example.com", "bob@example.com"}
    john_row = next(user for user in users if user["id"] == 1)
    assert john_row["is_superuser"] is True


def test_users_list_pages_with_offset_and_limit(client: TestClient, john: dict[str, str]) -> None:
    for name in ("bob", "carol", "dave"):
        assert signup(client, email=f"{name}@example.com").status_code == 201
    everyone = client.get(USERS, params={"limit": 100}, headers=john).json()
    assert len(everyone) == 5
    page = client.get(USERS, params={"offset": 1, "limit": 2}, headers=john)
    assert page.status_code == 200
    assert page.json() == everyone[1:3]
    assert client.get(USERS, params={"offset": 5}, headers=john).json() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("offset", "-1", id="negative-offset"),
        pytest.param("offset", str(10**30), id="huge-offset"),
        pytest.param("offset", "abc", id="text-offset"),
        pytest.param("limit", "0", id="zero-limit"),
        pytest.param("limit", "101", id="limit-over-100"),
        pytest.param("limit", str(10**30), id="huge-limit"),
    ],
)
def test_users_list_rejects_bad_paging(client: TestClient, john: dict[str, str], name: str, value: str) -> None:
    assert_422(client.get(USERS, params={name: value}, headers=john), ["query", name])


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
def test_users_list_follows_link_to_every_user_once(client: TestClient, john: dict[str, str]) -> None:
    for name in ("bob", "carol", "dave"):
        assert signup(client, email=f"{name}@example.com").status_code == 201
    everyone = [user["id"] for user in client.get(USERS, params={"limit": 100}, headers=john).json()]
    response = client.get(USERS, params={"limit": 2, "count": "true"}, headers=john)
    found = []
    while True:
        assert response.status_code == 200, response.text
        assert response.headers["X-Total-Count"] == "5"
        found += [user["id"] for user in response.json()]
        url = next_link(response)
        if url is None:
            break
        assert urlsplit(url).path == USERS
        response = client.get(url, headers=john)
    assert found == everyone


def test_users_list_counts_only_when_asked(client: TestClient, john: dict[str, str]) -> None:
    assert client.get(USERS, params={"count": "true"}, headers=john).headers["X-Total-Count"] == "2"


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
def test_users_list_without_count_sends_no_total(client: TestClient, john: dict[str, str]) -> None:
    response = client.get(USERS, params={"limit": 2}, headers=john)
    assert response.status_code == 200
    assert "X-Total-Count" not in response.headers
    assert "Link" not in response.headers


@pytest.mark.twin_differs("it does not validate the query: a bad after_id or count is ignored", twin="litestar")
@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"after_id": "0"}, id="zero-after-id"),
        pytest.param({"after_id": "abc"}, id="text-after-id"),
    ],
)
def test_users_list_rejects_a_bad_cursor(client: TestClient, john: dict[str, str], params: dict[str, str]) -> None:
    assert_422(client.get(USERS, params=params, headers=john), ["query", "after_id"])


def test_users_list_is_for_superusers_only(client: TestClient, alice: dict[str, str]) -> None:
    forbidden = client.get(USERS, headers=alice)
    assert forbidden.status_code == 403
    assert isinstance(forbidden.json()["detail"], str)
    assert "johndoe@example.com" not in forbidden.text

    anonymous = client.get(USERS)
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "Not authenticated"}
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.twin_differs("FastAPI answers a collection path without its trailing slash with a 307")
def test_users_list_answers_without_the_trailing_slash(client: TestClient, john: dict[str, str]) -> None:
    """docs: API: paths with a trailing slash also answer without it, directly (no 307)."""
    response = client.get(USERS.rstrip("/"), headers=john)
    assert response.status_code == 200, response.text
    assert len(response.json()) == 2


# One user


@pytest.mark.parametrize("who", ["alice", "john"])
def test_user_reads_with_their_todos(client: TestClient, request: pytest.FixtureRequest, who: str) -> None:
    headers: dict[str, str] = request.getfixturevalue(who)
    response = client.get(f"{USERS}2", headers=headers)
    assert response.status_code == 200
    user = response.json()
    assert user.keys() == USER_KEYS | {"todos"}
    assert (user["id"], user["email"], user["is_superuser"]) == (2, "alice@example.com", False)
    assert [todo["id"] for todo in user["todos"]] == [3, 4]
    for todo in user["todos"]:
        assert todo.keys() == TODO_KEYS
        assert todo["owner_id"] == 2


@pytest.mark.parametrize(
    ("who", "user_id"),
    [
        pytest.param("alice", 1, id="someone-else"),
        pytest.param("alice", 999, id="unknown"),
        pytest.param("john", 999, id="superuser-unknown"),
    ],
)
def test_someone_else_or_unknown_user_is_404(
    client: TestClient, request: pytest.FixtureRequest, who: str, user_id: int
) -> None:
    headers: dict[str, str] = request.getfixturevalue(who)
    response = client.get(f"{USERS}{user_id}", headers=headers)
    assert response.status_code == 404
    assert isinstance(response.json()["detail"], str)
    assert "johndoe" not in response.text


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("-1", id="negative"),
        pytest.param(str(10**30), id="huge"),
        pytest.param("abc", id="not-an-int"),
    ],
)
@pytest.mark.twin_differs(
    "Litestar names the path parameter (todo_id, user_id) and answers a non-integer with a 404", twin="litestar"
)
def test_bad_user_ids_are_422(client: TestClient, john: dict[str, str], bad_id: str) -> None:
    assert_422(client.get(f"{USERS}{bad_id}", headers=john), ["path", "id"])


def test_reading_a_user_needs_a_token(client: TestClient) -> None:
    response = client.get(f"{USERS}1")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
