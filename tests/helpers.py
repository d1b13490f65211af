"""What the test modules share besides fixtures: constants, settings, logins, assertions,
forged tokens. Fixtures live in conftest.py."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Self

import httpx2 as httpx
import jwt
import pytest
import sqlalchemy as sa

from asgi_todo.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256"

# True in the quick loop (pytest with no -m; set by tests/conftest.py before any test module is
# imported): property-based tests try a quarter of their examples there, every one under -m full.
QUICK = False


def examples(count: int) -> int:
    """How many examples a property-based test tries: `count` in the full run."""
    return max(count // 4, 10) if QUICK else count


TOKEN_URL = "/api/auth/token"
JOHN = ("johndoe@example.com", "secret")  # demo superuser
ALICE = ("alice@example.com", "secret2")  # demo user


@contextmanager
def postgres_database(admin: sa.Engine, name: str) -> Iterator[str]:
    """A new PostgreSQL database beside `admin`'s (an AUTOCOMMIT engine), dropped again at the
    end (one an interrupted run left behind is dropped first); yields its URL."""
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require(available: bool, what: str) -> None:
    """Skip when a real part is missing locally; in CI a missing part is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not available")


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": SECRET_KEY,
        "bcrypt_rounds": 4,
        "reset_db": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def bearer(token: dict[str, Any] | str) -> dict[str, str]:
    """Auth headers for an access token, or for the access token of a token response."""
    access = token if isinstance(token, str) else token["access_token"]
    return {"Authorization": f"Bearer {access}"}


def login(client: httpx.Client, email: str, password: str) -> dict[str, str]:
    """Auth headers from a password grant, which must succeed (a TestClient is an httpx.Client)."""
    return bearer(grant(client, email, password))


def server_login(base_url: str, email: str, password: str) -> dict[str, str]:
    """login() against a real server."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        return login(http, email, password)


def scalar(database_url: str, query: str) -> Any:
    """One value read straight from a test's database, around the app."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.scalar(sa.text(query))
    finally:
        engine.dispose()


def analyze(engine: sa.Engine) -> None:
    """Statistics after a bulk load, as autovacuum would soon gather them (PostgreSQL: and the
    visibility map, which index-only scans need)."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        else:
            connection.exec_driver_sql("ANALYZE")
            connection.commit()


def utc(value: str) -> datetime:
    """A response's timestamp: UTC, with its offset written."""
    assert value.endswith(("Z", "+00:00")), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def assert_422(response: Any, loc: list[str]) -> None:
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert all({"type", "loc", "msg"} <= error.keys() for error in errors), errors
    assert loc in [error["loc"] for error in errors], errors


def assert_401(response: Any, body: dict[str, str]) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == body
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def forge(key: str = SECRET_KEY, algorithm: str = "HS256", drop: str = "", **claims: object) -> str:
    """A JWT for user 1 with the claims given, signed as asked, without the claim `drop`."""
    now = int(time.time())
    payload: dict[str, object] = {"sub": "1", "iat": now, "exp": now + 600, **claims}
    payload.pop(drop, None)
    return jwt.encode(payload, key, algorithm=algorithm)


def alg_none() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "1", "iat": now, "exp": now + 600}, None, algorithm="none")


def grant(client: httpx.Client, email: str, password: str) -> dict[str, Any]:
    """The token response of a password grant, which must succeed."""
    response = client.post(TOKEN_URL, data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    token: dict[str, Any] = response.json()
    return token


def refresh_grant(client: httpx.Client, refresh_token: str) -> Any:
    return client.post(TOKEN_URL, data={"grant_type": "refresh_token", "refresh_token": refresh_token})


def assert_invalid_grant(response: Any) -> None:
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail.startswith("invalid_grant"), detail
    assert "access_token" not in response.text


class Workers:
    """Threads that each run `_run(arg)`, one per argument, from the start of a `with` block
    until its end; `_run` loops until `_stop` is set."""

    def __init__(self, args: list[Any]) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(arg,)) for arg in args]

    def _run(self, arg: Any) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
