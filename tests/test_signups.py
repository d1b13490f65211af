"""Sign-up abuse (docs: Security, "Sign-ups"): sign-ups are limited per client address through the
database counters that the login limits use, so every worker and host shares them; emails
compare after NFKC normalisation and case folding."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from threading import Barrier
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from asgi_todo.app import create_app

from .helpers import ALICE, TOKEN_URL, make_settings
from .servers import server_env, start_gunicorn, start_uvicorn

SIGNUP = "/api/users/signup"
PASSWORD = "a long enough password"
LIMITS = {"signup_max_per_client": 3, "signup_window_seconds": 600}

Connect = Callable[..., TestClient]


@pytest.fixture
def connect(database_url: str) -> Iterator[Connect]:
    """A client on a new app instance over this test's database, seen from `address`."""
    opened: list[TestClient] = []
    with ExitStack() as stack:

        def open_client(address: str = "192.0.2.1") -> TestClient:
            app = create_app(make_settings(database_url, reset_db=False, **LIMITS))
            opened.append(stack.enter_context(TestClient(app, client=(address, 50000))))
            return opened[-1]

        yield open_client


def sign_up(client: Any, email: str | None = None) -> Any:
    email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
    return client.post(SIGNUP, json={"email": email, "password": PASSWORD})


def assert_429(response: Any) -> None:
    assert response.status_code == 429, response.text
    assert isinstance(response.json()["detail"], str)
    assert 1 <= int(response.headers["Retry-After"]) <= LIMITS["signup_window_seconds"]


def test_sign_ups_past_the_limit_get_429_with_retry_after(connect: Connect) -> None:
    client = connect()
    for _ in range(3):
        assert sign_up(client).status_code == 201
    refused = sign_up(client, "refused@example.com")
    assert_429(refused)
    assert client.post(TOKEN_URL, data={"username": "refused@example.com", "password": PASSWORD}).status_code == 401
    assert client.post(TOKEN_URL, data={"username": ALICE[0], "password": ALICE[1]}).status_code == 200  # logins go on


def test_the_limit_is_per_client_address(connect: Connect) -> None:
    first = connect("192.0.2.1")
    for _ in range(3):
        assert sign_up(first).status_code == 201
    assert_429(sign_up(first))
    assert sign_up(connect("198.51.100.2")).status_code == 201


def test_every_app_instance_shares_the_count(connect: Connect) -> None:
    """Two instances (two workers, or two hosts) over one database, one client address."""
    first, second = connect(), connect()
    assert sign_up(first).status_code == 201
    assert sign_up(second).status_code == 201
    assert sign_up(first).status_code == 201
    assert_429(sign_up(second))
    assert_429(sign_up(first))


def test_refused_and_taken_sign_ups_count_too(connect: Connect) -> None:
    """Each attempt is counted before its bcrypt work, whatever its outcome."""
    client = connect()
    assert sign_up(client, ALICE[0]).status_code == 409
    assert sign_up(client, ALICE[0]).status_code == 409
    assert sign_up(client).status_code == 201
    assert_429(sign_up(client))


def test_a_look_alike_email_logs_in_to_the_same_account_and_shares_its_failures(connect: Connect) -> None:
    client = connect()
    for email in ("ALICE@example.com", "\uff41lice@example.com"):
        assert client.post(TOKEN_URL, data={"username": email, "password": ALICE[1]}).status_code == 200
    for _ in range(5):
        wrong = client.post(TOKEN_URL, data={"username": "\uff21lice@example.com", "password": "wrong password"})
        assert wrong.status_code == 401
    assert client.post(TOKEN_URL, data={"username": ALICE[0], "password": ALICE[1]}).status_code == 429


def _signup_at(url: str, start: Barrier, index: int) -> int:
    start.wait()
    email = f"burst-{index}-{uuid.uuid4().hex[:8]}@example.com"
    return httpx.post(f"{url}{SIGNUP}", json={"email": email, "password": PASSWORD}, timeout=60).status_code


@pytest.mark.process
def test_a_burst_of_sign_ups_gets_exactly_the_limit(database_url: str) -> None:
    """12 sign-ups released at once from one address, limit 3: three are created, the rest are
    429s before any bcrypt work (uvicorn on SQLite, gunicorn with 2 workers on PostgreSQL)."""
    env = server_env(database_url, RESET_DB="1", SIGNUP_MAX_PER_CLIENT="3", BCRYPT_ROUNDS="10")
    server = start_uvicorn(env) if database_url.startswith("sqlite") else start_gunicorn(env, workers=2)
    try:
        server.wait_healthy()
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(partial(_signup_at, server.url, Barrier(12)), range(12)))
    finally:
        server.stop()
    assert sorted(statuses) == [201] * 3 + [429] * 9, statuses
