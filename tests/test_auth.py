"""The token endpoint (OAuth2 password grant) and the bearer check, against the docs (API, "Endpoints")."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo.settings import Settings
from tests.helpers import SECRET_KEY, alg_none, assert_401, forge, utc

pytestmark = pytest.mark.twin  # also run on the benchmark's FastAPI twin

TOKEN = "/api/auth/token"
ME = "/api/auth/me"
USER_KEYS = {"id", "email", "fname", "lname", "is_superuser", "created_at", "updated_at"}
WRONG_LOGIN = {"detail": "Incorrect email or password"}
INVALID = {"detail": "Invalid authentication credentials"}


# Token endpoint


def test_token_is_a_bearer_token_for_the_user(client: TestClient, settings: Settings) -> None:
    response = client.post(TOKEN, data={"username": "johndoe@example.com", "password": "secret"})
    assert response.status_code == 200
    token = response.json()
    assert {"access_token", "token_type", "expires_in"} <= token.keys()  # and refresh_token: tests/test_refresh.py
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == settings.access_token_expire_minutes * 60
    claims = jwt.decode(token["access_token"], SECRET_KEY, algorithms=["HS256"])
    assert claims["sub"] == "1"
    assert claims["exp"] - claims["iat"] == token["expires_in"]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"grant_type": "password"}, id="grant-type-password"),
        pytest.param({"grant_type": "password", "scope": "", "client_id": "", "client_secret": ""}, id="empty-extras"),
        pytest.param({"scope": "me todos", "client_id": "swagger", "client_secret": "x"}, id="filled-extras"),
    ],
)
def test_token_accepts_the_optional_rfc_6749_fields(client: TestClient, extra: dict[str, str]) -> None:
    response = client.post(TOKEN, data={"username": "alice@example.com", "password": "secret2", **extra})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"


def test_token_tolerates_the_basic_header_swagger_ui_sends(client: TestClient) -> None:
    response = client.post(
        TOKEN,
        data={"grant_type": "password", "username": "alice@example.com", "password": "secret2", "scope": ""},
        headers={"Authorization": "Basic Og=="},
    )
    assert response.status_code == 200, response.text
    me = client.get(ME, headers={"Authorization": f"Bearer {response.json()['access_token']}"})
    assert me.json()["email"] == "alice@example.com"


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param("johndoe@example.com", "wrong", id="wrong-password"),
        pytest.param("johndoe@example.com", "secret2", id="someone-elses-password"),
        pytest.param("nobody@example.com", "secret", id="unknown-email"),
        pytest.param("johndoe@example.com", "s" * 73, id="73-byte-password"),
        pytest.param("johndoe@example.com", "é" * 200, id="400-byte-password"),
        pytest.param("johndoe@example.com", "secret" + "x" * 80, id="right-prefix-over-72-bytes"),
    ],
)
def test_token_with_wrong_credentials_is_401(client: TestClient, username: str, password: str) -> None:
    assert_401(client.post(TOKEN, data={"username": username, "password": password}), WRONG_LOGIN)


@pytest.mark.parametrize(
    ("form", "missing"),
    [
        pytest.param({"password": "secret"}, "username", id="no-username"),
        pytest.param({"username": "johndoe@example.com"}, "password", id="no-password"),
    ],
)
def test_token_with_a_missing_field_is_422(client: TestClient, form: dict[str, str], missing: str) -> None:
    response = client.post(TOKEN, data=form)
    assert response.status_code == 422
    assert ["body", missing] in [error["loc"] for error in response.json()["detail"]]


@pytest.mark.twin_differs("OAuth2PasswordRequestForm checks grant_type with a pattern: a 422, not RFC 6749's 400")
@pytest.mark.twin_differs(
    "OAuth2PasswordRequestForm checks grant_type with a pattern: a 422, not RFC 6749's 400", twin="fastapi-ourdata"
)
@pytest.mark.twin_differs("the form is the password grant only: another grant_type is a 422", twin="litestar")
def test_token_with_an_unsupported_grant_type_is_400(client: TestClient) -> None:
    form = {"grant_type": "foo", "username": "johndoe@example.com", "password": "secret"}
    response = client.post(TOKEN, data=form)
    assert response.status_code == 400
    assert response.json()["detail"]
    assert "access_token" not in response.text


def test_token_with_a_json_body_is_a_client_error(client: TestClient) -> None:
    response = client.post(TOKEN, json={"username": "johndoe@example.com", "password": "secret"})
    assert 400 <= response.status_code < 500
    assert "detail" in response.json()
    assert "access_token" not in response.text


# Bearer check


def test_me_returns_the_caller(client: TestClient, john: dict[str, str], alice: dict[str, str]) -> None:
    response = client.get(ME, headers=john)
    assert response.status_code == 200
    user = response.json()
    assert user.keys() == USER_KEYS
    assert (user["id"], user["email"], user["is_superuser"]) == (1, "johndoe@example.com", True)
    utc(user["created_at"])
    utc(user["updated_at"])
    assert client.get(ME, headers=alice).json()["id"] == 2


def test_bearer_scheme_is_case_insensitive(client: TestClient, john: dict[str, str]) -> None:
    token = john["Authorization"].removeprefix("Bearer ")
    assert client.get(ME, headers={"Authorization": f"bearer {token}"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": ""}, id="empty-header"),
        pytest.param(
            {"Authorization": "Basic Og=="},
            id="basic-scheme",
            marks=pytest.mark.twin_differs(
                "Litestar reads any scheme's value as the token: invalid, not missing", twin="litestar"
            ),
        ),
    ],
)
def test_me_without_a_token_is_401_not_authenticated(client: TestClient, headers: dict[str, str]) -> None:
    assert_401(client.get(ME, headers=headers), {"detail": "Not authenticated"})


def _login_of(client: TestClient, email: str, password: str) -> str:
    """The login (`sid`) of a real login; the FastAPI twin's tokens name none."""
    response = client.post(TOKEN, data={"username": email, "password": password})
    login: str = jwt.decode(response.json()["access_token"], options={"verify_signature": False}).get("sid", "")
    return login


def test_a_forged_token_for_a_real_user_is_accepted_when_signed_right(client: TestClient) -> None:
    """The forging helper itself is sound, so the rejections below are about the one flaw each."""
    token = forge(sub="2", sid=_login_of(client, "alice@example.com", "secret2"))
    response = client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["id"] == 2


@pytest.mark.twin_differs("its tokens name no login, and it keeps no logins to revoke")
@pytest.mark.twin_differs("its tokens name no login, and it keeps no logins to revoke", twin="litestar")
@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({}, id="no-login"),
        pytest.param({"sid": "no-such-login"}, id="unknown-login"),
        pytest.param({"sid": "of-another-user"}, id="another-users-login"),
    ],
)
def test_a_token_must_name_a_live_login_of_its_user(client: TestClient, claims: dict[str, str]) -> None:
    """Access tokens are bound to their login, so ending the login ends them (docs: Security, Tokens and logins)."""
    if claims.get("sid") == "of-another-user":
        claims = {"sid": _login_of(client, "johndoe@example.com", "secret")}
    assert_401(client.get(ME, headers={"Authorization": f"Bearer {forge(sub='2', **claims)}"}), INVALID)


def _expired() -> str:
    now = int(time.time())
    return forge(iat=now - 3600, exp=now - 60)


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda: "garbage", id="garbage"),
        pytest.param(lambda: "a.b.c", id="three-garbage-parts"),
        pytest.param(_expired, id="expired"),
        pytest.param(lambda: forge(key="another-secret-key-that-is-long-enough-for-hs256"), id="wrong-key"),
        pytest.param(alg_none, id="alg-none"),
        pytest.param(lambda: forge(drop="exp"), id="missing-exp"),
        pytest.param(lambda: forge(drop="iat"), id="missing-iat"),
        pytest.param(lambda: forge(drop="sub"), id="missing-sub"),
        pytest.param(lambda: forge(sub="999"), id="unknown-user"),
        pytest.param(lambda: forge(sub="abc"), id="non-numeric-sub"),
        pytest.param(lambda: forge(sub=str(10**30)), id="huge-sub"),
        # Ten digits pass the shape check, but ids are 32-bit integers on PostgreSQL.
        pytest.param(lambda: forge(sub="9999999999"), id="sub-over-int32"),
        pytest.param(lambda: forge(sub="2147483648"), id="sub-just-over-int32"),
        pytest.param(lambda: forge(sub="0"), id="sub-zero"),
    ],
)
def test_me_with_a_bad_token_is_401_invalid_credentials(client: TestClient, make_token: Callable[[], str]) -> None:
    assert_401(client.get(ME, headers={"Authorization": f"Bearer {make_token()}"}), INVALID)


def test_token_of_a_deleted_user_is_401(client: TestClient, alice: dict[str, str], settings: Settings) -> None:
    assert client.get(ME, headers=alice).status_code == 200
    engine = sa.create_engine(settings.database_url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.begin() as connection:
            for table in metadata.tables.values():
                if "owner_id" in table.columns:
                    connection.execute(table.delete().where(table.c.owner_id == 2))
            connection.execute(sa.text("DELETE FROM users WHERE id = 2"))
    finally:
        engine.dispose()
    assert_401(client.get(ME, headers=alice), INVALID)
    assert_401(client.get("/api/todos/", headers=alice), INVALID)
    assert_401(client.post(TOKEN, data={"username": "alice@example.com", "password": "secret2"}), WRONG_LOGIN)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param("johndoe@example.com", "wrong password", id="wrong-password"),
        pytest.param("nobody@example.com", "wrong password", id="unknown-email"),
        pytest.param("johndoe@example.com", "x" * 100, id="over-72-bytes"),
        pytest.param("johndoe@example.com", "secret", id="right-password"),
    ],
)
def test_every_login_costs_one_bcrypt_check(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, username: str, password: str
) -> None:
    """An unknown email or an over-long password costs the same bcrypt work as a wrong
    password, so the answer's timing does not tell which case it was (asgi_todo only)."""
    from asgi_todo import security
    from asgi_todo.app import create_app
    from tests.helpers import make_settings

    checked: list[str] = []
    verify = security.verify_password

    def counting(candidate: str, hashed: str) -> bool:
        checked.append(hashed)
        return verify(candidate, hashed)

    monkeypatch.setattr(security, "verify_password", counting)
    with TestClient(create_app(make_settings(sqlite_url))) as client:
        response = client.post(TOKEN, data={"username": username, "password": password})
    assert response.status_code == (200 if password == "secret" else 401)
    assert len(checked) == 1
    assert checked[0].startswith("$bcrypt-sha256$v=2,t=2b,r=4$")  # a real hash of the configured cost, the dummy too
