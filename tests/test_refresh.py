"""Refresh tokens (RFC 6749 section 6) and logout (docs: Security, "Tokens and logins"): a refresh token with every
login, single use, rotation, reuse revoking the whole family, logout revoking the caller's own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from threading import Barrier
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo.settings import Settings

from .helpers import ALICE, JOHN, assert_invalid_grant, bearer, refresh_grant
from .servers import server_env, start_uvicorn

TOKEN = "/api/auth/token"
LOGOUT = "/api/auth/logout"
ME = "/api/auth/me"
TOKEN_KEYS = {"access_token", "token_type", "expires_in", "refresh_token"}


def password_grant(client: Any, email: str, password: str) -> dict[str, Any]:
    response = client.post(TOKEN, data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    token: dict[str, Any] = response.json()
    return token


def refreshed(client: Any, refresh_token: str) -> dict[str, Any]:
    response = refresh_grant(client, refresh_token)
    assert response.status_code == 200, response.text
    token: dict[str, Any] = response.json()
    return token


def whoami(client: TestClient, token: dict[str, Any]) -> int:
    response = client.get(ME, headers=bearer(token))
    assert response.status_code == 200, response.text
    user_id: int = response.json()["id"]
    return user_id


# Issuing and exchanging


def test_password_grant_returns_a_refresh_token(client: TestClient, settings: Settings) -> None:
    token = password_grant(client, *ALICE)
    assert token.keys() == TOKEN_KEYS
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == settings.access_token_expire_minutes * 60
    assert isinstance(token["refresh_token"], str)
    assert len(token["refresh_token"]) >= 32
    assert token["refresh_token"] != token["access_token"]
    assert whoami(client, token) == 2


def test_each_login_gets_its_own_refresh_token(client: TestClient) -> None:
    tokens = {password_grant(client, *ALICE)["refresh_token"] for _ in range(3)}
    assert len(tokens) == 3


def test_refresh_grant_returns_a_new_pair_for_the_same_user(client: TestClient) -> None:
    first = password_grant(client, *ALICE)
    response = refresh_grant(client, first["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    second = response.json()
    assert second.keys() == TOKEN_KEYS
    assert second["token_type"] == "bearer"
    assert second["refresh_token"] != first["refresh_token"]
    assert whoami(client, second) == 2
    assert whoami(client, refreshed(client, second["refresh_token"])) == 2  # the chain goes on


def test_a_refresh_token_is_single_use(client: TestClient) -> None:
    first = password_grant(client, *ALICE)
    refreshed(client, first["refresh_token"])
    assert_invalid_grant(refresh_grant(client, first["refresh_token"]))


def test_reusing_a_refresh_token_revokes_its_whole_family(client: TestClient) -> None:
    first = password_grant(client, *ALICE)
    second = refreshed(client, first["refresh_token"])
    third = refreshed(client, second["refresh_token"])
    assert_invalid_grant(refresh_grant(client, first["refresh_token"]))  # a thief replays an old one
    assert_invalid_grant(refresh_grant(client, third["refresh_token"]))  # the newest stops working too
    assert_invalid_grant(refresh_grant(client, second["refresh_token"]))


def test_reuse_leaves_other_logins_working(client: TestClient) -> None:
    stolen = password_grant(client, *ALICE)
    other_device = password_grant(client, *ALICE)
    johns = password_grant(client, *JOHN)
    refreshed(client, stolen["refresh_token"])
    assert_invalid_grant(refresh_grant(client, stolen["refresh_token"]))
    assert whoami(client, refreshed(client, other_device["refresh_token"])) == 2
    assert whoami(client, refreshed(client, johns["refresh_token"])) == 1


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda token: "garbage", id="garbage"),
        pytest.param(lambda token: "x" * 200, id="long-garbage"),
        pytest.param(lambda token: token["access_token"][:256], id="an-access-token"),
        pytest.param(lambda token: token["refresh_token"][:-1], id="truncated"),
        pytest.param(lambda token: token["refresh_token"] + "x", id="extended"),
        pytest.param(lambda token: token["refresh_token"].upper(), id="upper-cased"),
        pytest.param(lambda token: "' OR '1'='1", id="sql-injection"),
    ],
)
def test_an_unknown_refresh_token_is_invalid_grant(client: TestClient, make_token: Any) -> None:
    token = password_grant(client, *ALICE)
    bad = make_token(token)
    if bad == token["refresh_token"]:
        pytest.skip("the transformation left the token unchanged")
    assert_invalid_grant(refresh_grant(client, bad))
    assert whoami(client, refreshed(client, token["refresh_token"])) == 2  # the real one is unharmed


def test_an_expired_refresh_token_is_invalid_grant(client: TestClient, settings: Settings) -> None:
    token = password_grant(client, *ALICE)
    engine = sa.create_engine(settings.database_url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine, only=["refresh_tokens"])
        table = metadata.tables["refresh_tokens"]
        past = datetime.now(UTC) - timedelta(minutes=1)
        value = past.replace(tzinfo=None) if settings.is_sqlite else past
        with engine.begin() as connection:
            connection.execute(table.update().values(expires_at=value))
    finally:
        engine.dispose()
    assert_invalid_grant(refresh_grant(client, token["refresh_token"]))


def test_refresh_tokens_are_not_stored_in_the_clear(client: TestClient, settings: Settings) -> None:
    token = password_grant(client, *ALICE)
    engine = sa.create_engine(settings.database_url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            for table in metadata.tables.values():
                for row in connection.execute(table.select()):
                    assert token["refresh_token"] not in repr(tuple(row)), table.name
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({"grant_type": "refresh_token"}, id="no-refresh-token"),
        pytest.param({"grant_type": "refresh_token", "username": ALICE[0], "password": ALICE[1]}, id="password-only"),
    ],
)
def test_refresh_grant_without_a_refresh_token_is_422(client: TestClient, form: dict[str, str]) -> None:
    response = client.post(TOKEN, data=form)
    assert response.status_code == 422, response.text
    assert ["body", "refresh_token"] in [error["loc"] for error in response.json()["detail"]]
    assert "access_token" not in response.text


@pytest.mark.parametrize(
    ("form", "missing"),
    [
        pytest.param({"grant_type": "password", "password": "secret"}, "username", id="no-username"),
        pytest.param({"grant_type": "password", "username": ALICE[0]}, "password", id="no-password"),
    ],
)
def test_password_grant_with_a_missing_field_is_422(client: TestClient, form: dict[str, str], missing: str) -> None:
    response = client.post(TOKEN, data=form)
    assert response.status_code == 422, response.text
    assert ["body", missing] in [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize(
    "grant_type",
    [
        pytest.param("client_credentials", id="client-credentials"),
        pytest.param("authorization_code", id="authorization-code"),
        pytest.param("urn:ietf:params:oauth:grant-type:jwt-bearer", id="jwt-bearer"),
        pytest.param("refresh", id="almost-refresh-token"),
    ],
)
def test_other_grant_types_are_400(client: TestClient, grant_type: str) -> None:
    token = password_grant(client, *ALICE)
    form = {
        "grant_type": grant_type,
        "username": ALICE[0],
        "password": ALICE[1],
        "refresh_token": token["refresh_token"],
    }
    response = client.post(TOKEN, data=form)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["detail"], str)
    assert "access_token" not in response.text
    assert whoami(client, refreshed(client, token["refresh_token"])) == 2  # not consumed


# Logout


def logout(client: TestClient, token: dict[str, Any], refresh_token: str) -> Any:
    return client.post(LOGOUT, json={"refresh_token": refresh_token}, headers=bearer(token))


def test_logout_revokes_the_refresh_token(client: TestClient) -> None:
    token = password_grant(client, *ALICE)
    response = logout(client, token, token["refresh_token"])
    assert response.status_code == 204
    assert response.content == b""
    assert_invalid_grant(refresh_grant(client, token["refresh_token"]))


def test_logout_revokes_the_whole_family(client: TestClient) -> None:
    first = password_grant(client, *ALICE)
    second = refreshed(client, first["refresh_token"])
    assert logout(client, second, first["refresh_token"]).status_code == 204  # an older token of the login
    assert_invalid_grant(refresh_grant(client, second["refresh_token"]))


def test_logout_leaves_the_callers_other_logins_working(client: TestClient) -> None:
    phone = password_grant(client, *ALICE)
    laptop = password_grant(client, *ALICE)
    assert logout(client, phone, phone["refresh_token"]).status_code == 204
    assert whoami(client, refreshed(client, laptop["refresh_token"])) == 2


def test_logout_with_someone_elses_refresh_token_leaves_it_working(client: TestClient) -> None:
    johns = password_grant(client, *JOHN)
    alices = password_grant(client, *ALICE)
    assert logout(client, alices, johns["refresh_token"]).status_code == 204
    assert whoami(client, refreshed(client, johns["refresh_token"])) == 1
    assert whoami(client, refreshed(client, alices["refresh_token"])) == 2


def test_logout_with_an_unknown_refresh_token_is_204(client: TestClient) -> None:
    token = password_grant(client, *ALICE)
    assert logout(client, token, "no-such-token").status_code == 204
    assert whoami(client, refreshed(client, token["refresh_token"])) == 2


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer garbage"}, id="bad-token"),
    ],
)
def test_logout_needs_a_valid_bearer_token(client: TestClient, headers: dict[str, str]) -> None:
    token = password_grant(client, *ALICE)
    response = client.post(LOGOUT, json={"refresh_token": token["refresh_token"]}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert whoami(client, refreshed(client, token["refresh_token"])) == 2


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty"),
        pytest.param({"refresh_token": None}, id="null"),
        pytest.param({"refresh_token": 5}, id="number"),
    ],
)
def test_logout_without_a_refresh_token_is_422(client: TestClient, body: dict[str, object]) -> None:
    token = password_grant(client, *ALICE)
    response = client.post(LOGOUT, json=body, headers=bearer(token))
    assert response.status_code == 422, response.text
    assert ["body", "refresh_token"] in [error["loc"] for error in response.json()["detail"]]
    assert whoami(client, refreshed(client, token["refresh_token"])) == 2


# Logout ends the session now (docs: Security, "Revocation is final")


def test_logout_ends_the_logins_access_tokens_at_once(client: TestClient) -> None:
    first = password_grant(client, *ALICE)
    second = refreshed(client, first["refresh_token"])
    assert logout(client, second, second["refresh_token"]).status_code == 204
    for token in (first, second):
        assert client.get(ME, headers=bearer(token)).status_code == 401


def test_logout_leaves_the_access_tokens_of_other_logins_working(client: TestClient) -> None:
    phone = password_grant(client, *ALICE)
    laptop = password_grant(client, *ALICE)
    assert logout(client, phone, phone["refresh_token"]).status_code == 204
    assert whoami(client, laptop) == 2


def test_reuse_ends_the_familys_access_tokens_at_once(client: TestClient) -> None:
    first = password_grant(client, *ALICE)
    second = refreshed(client, first["refresh_token"])
    other = password_grant(client, *ALICE)
    assert_invalid_grant(refresh_grant(client, first["refresh_token"]))
    for token in (first, second):
        assert client.get(ME, headers=bearer(token)).status_code == 401
    assert whoami(client, other) == 2


def test_logout_with_only_the_bearer_token_ends_the_callers_login(client: TestClient) -> None:
    token = password_grant(client, *ALICE)
    other = password_grant(client, *ALICE)
    response = client.post(LOGOUT, headers=bearer(token))
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert client.get(ME, headers=bearer(token)).status_code == 401
    assert_invalid_grant(refresh_grant(client, token["refresh_token"]))
    assert whoami(client, refreshed(client, other["refresh_token"])) == 2


def test_logout_with_an_empty_json_content_type_and_no_body_ends_the_callers_login(client: TestClient) -> None:
    token = password_grant(client, *ALICE)
    headers = {**bearer(token), "Content-Type": "application/json"}
    assert client.post(LOGOUT, headers=headers).status_code == 204
    assert_invalid_grant(refresh_grant(client, token["refresh_token"]))


# Racing


@pytest.mark.process
def test_two_clients_racing_one_refresh_token_get_at_most_one_pair(database_url: str) -> None:
    """The same refresh token sent twice at once: at most one new pair, never two."""
    server = start_uvicorn(server_env(database_url, RESET_DB="1"))
    try:
        server.wait_healthy()
        for _ in range(5):
            with httpx.Client(base_url=server.url, timeout=30) as http:
                token = password_grant(http, *ALICE)
            barrier = Barrier(2)

            def race(_: int, token: dict[str, Any] = token, barrier: Barrier = barrier) -> int:
                with httpx.Client(base_url=server.url, timeout=30) as http:
                    barrier.wait()
                    return int(refresh_grant(http, token["refresh_token"]).status_code)

            with ThreadPoolExecutor(2) as pool:
                statuses = sorted(pool.map(race, range(2)))
            assert statuses in ([200, 400], [400, 400]), statuses
    finally:
        server.stop()
