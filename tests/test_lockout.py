"""Brute-force limits on the token endpoint (docs: Security, "Brute force"): failures counted in the database
per account and per client address, 429 with Retry-After past a threshold, windows that grow
and always end, a success that forgets the account's count, and a count shared by every app
instance over the same database."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo.app import create_app
from asgi_todo.models import LoginFailures

from .helpers import ALICE, JOHN, make_settings
from .servers import server_env, start_uvicorn, stop_all

TOKEN = "/api/auth/token"
WRONG = "not-the-password"
WRONG_LOGIN = {"detail": "Incorrect email or password"}

Connect = Callable[..., TestClient]


@pytest.fixture
def connect(database_url: str) -> Iterator[Connect]:
    """Opens a client on a new app instance over this test's database, with settings
    overrides; `address` is the client address the app sees. The database holds the demo data."""
    opened: list[TestClient] = []
    with ExitStack() as stack:

        def open_client(address: str = "testclient", **overrides: object) -> TestClient:
            overrides.setdefault("reset_db", False)  # the database holds the demo data already
            app = create_app(make_settings(database_url, **overrides))
            opened.append(stack.enter_context(TestClient(app, client=(address, 50000))))
            return opened[-1]

        yield open_client


def attempt(client: TestClient, email: str, password: str) -> Any:
    return client.post(TOKEN, data={"username": email, "password": password})


def fail(client: TestClient, email: str, times: int = 1) -> None:
    """Wrong passwords, each still answered with a plain 401 (no lock yet)."""
    for _ in range(times):
        response = attempt(client, email, WRONG)
        assert response.status_code == 401, response.text
        assert response.json() == WRONG_LOGIN


def assert_locked(response: Any, *, at_most: int | None = None, at_least: int = 1) -> int:
    """A 429 JSON answer with a Retry-After in seconds, and no token."""
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)
    assert "access_token" not in response.text
    retry_after = int(response.headers["Retry-After"])
    assert at_least <= retry_after, retry_after
    if at_most is not None:
        assert retry_after <= at_most, retry_after
    return retry_after


def edit_failures(database_url: str, **values: object) -> None:
    """Change every row of the login_failures table, as time passing would."""
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.update(LoginFailures).values(**values))
    finally:
        engine.dispose()


def end_locks(database_url: str) -> None:
    edit_failures(database_url, locked_until=datetime.now(UTC) - timedelta(seconds=1))


def failures_of(database_url: str, word: str) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(LoginFailures.key, LoginFailures.failures)).all()
    finally:
        engine.dispose()
    return sum(failures for key, failures in rows if word in key)


# The account limit


def test_failures_below_the_threshold_are_401_and_the_right_password_still_works(connect: Connect) -> None:
    client = connect()
    fail(client, ALICE[0], times=4)  # default login_max_failures is 5
    assert attempt(client, *ALICE).status_code == 200


def test_account_locks_at_the_threshold_even_for_the_right_password(connect: Connect) -> None:
    client = connect()
    fail(client, ALICE[0], times=5)
    assert_locked(attempt(client, ALICE[0], WRONG), at_most=30)
    assert_locked(attempt(client, *ALICE), at_most=30)
    assert attempt(client, *JOHN).status_code == 200  # another account is not locked


@pytest.mark.parametrize(
    ("threshold", "lock_seconds"),
    [pytest.param(1, 45, id="threshold-1"), pytest.param(3, 7, id="threshold-3")],
)
def test_thresholds_and_first_window_are_settings(
    connect: Connect, database_url: str, threshold: int, lock_seconds: int
) -> None:
    client = connect(login_max_failures=threshold, login_lock_seconds=lock_seconds)
    fail(client, ALICE[0], times=threshold)
    assert_locked(attempt(client, *ALICE), at_least=lock_seconds - 1, at_most=lock_seconds)


def test_lock_window_doubles_with_each_further_failure_up_to_the_ceiling(connect: Connect, database_url: str) -> None:
    client = connect(login_max_failures=3, login_lock_seconds=10, login_lock_max_seconds=35)
    fail(client, ALICE[0], times=3)
    assert_locked(attempt(client, *ALICE), at_least=9, at_most=10)
    for window in (20, 35, 35, 35):  # 10 * 2, then 40 and more, capped at 35
        end_locks(database_url)
        fail(client, ALICE[0])
        assert_locked(attempt(client, *ALICE), at_least=window - 1, at_most=window)


def test_attempts_refused_during_a_lock_do_not_lengthen_it(connect: Connect, database_url: str) -> None:
    client = connect(login_max_failures=3, login_lock_seconds=10, login_lock_max_seconds=900)
    fail(client, ALICE[0], times=3)
    for _ in range(5):
        assert_locked(attempt(client, ALICE[0], WRONG), at_most=10)
    end_locks(database_url)
    fail(client, ALICE[0])  # the 4th failure, not the 9th: 20 seconds, not 160
    assert_locked(attempt(client, *ALICE), at_least=19, at_most=20)


def test_a_lock_ends_by_itself(connect: Connect) -> None:
    client = connect(login_max_failures=2, login_lock_seconds=1, login_lock_max_seconds=2)
    fail(client, ALICE[0], times=2)
    assert_locked(attempt(client, *ALICE), at_most=1)
    time.sleep(1.2)
    assert attempt(client, *ALICE).status_code == 200


def test_a_success_forgets_the_accounts_count(connect: Connect) -> None:
    client = connect()
    fail(client, ALICE[0], times=4)
    assert attempt(client, *ALICE).status_code == 200
    fail(client, ALICE[0], times=4)  # would have locked at the 5th failure without the reset
    assert attempt(client, *ALICE).status_code == 200


def test_a_count_is_forgotten_after_an_hour_without_failures(connect: Connect, database_url: str) -> None:
    client = connect()
    fail(client, ALICE[0], times=4)
    edit_failures(database_url, last_failure_at=datetime.now(UTC) - timedelta(minutes=61))
    fail(client, ALICE[0], times=4)
    assert attempt(client, *ALICE).status_code == 200


def test_a_count_within_the_hour_is_kept(connect: Connect, database_url: str) -> None:
    client = connect()
    fail(client, ALICE[0], times=4)
    edit_failures(database_url, last_failure_at=datetime.now(UTC) - timedelta(minutes=50))
    fail(client, ALICE[0])
    assert_locked(attempt(client, *ALICE))


def test_unknown_emails_lock_the_same_way_as_accounts(connect: Connect) -> None:
    client = connect()
    fail(client, "nobody@example.com", times=5)
    fail(client, ALICE[0], times=5)
    unknown = attempt(client, "nobody@example.com", WRONG)
    known = attempt(client, ALICE[0], WRONG)
    assert_locked(unknown, at_most=30)
    assert_locked(known, at_most=30)
    assert unknown.json() == known.json()
    assert unknown.headers.keys() - {"x-request-id", "retry-after"} == known.headers.keys() - {
        "x-request-id",
        "retry-after",
    }


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("ALICE@EXAMPLE.COM", id="upper-case"),
        pytest.param("Alice@Example.com", id="mixed-case"),
    ],
)
def test_spelling_variants_of_an_email_count_for_the_same_account(connect: Connect, variant: str) -> None:
    """Emails match case-insensitively at login, so their failures must add up too."""
    client = connect()
    assert attempt(client, variant, ALICE[1]).status_code == 200  # the variant is the same account
    fail(client, ALICE[0], times=4)
    fail(client, variant)
    assert_locked(attempt(client, *ALICE))


def test_the_account_lock_holds_for_every_client_address(connect: Connect) -> None:
    first = connect("198.51.100.1")
    second = connect("203.0.113.2")
    fail(first, ALICE[0], times=5)
    assert_locked(attempt(second, *ALICE))


# The client limit


def test_one_client_trying_many_accounts_is_locked(connect: Connect) -> None:
    attacker = connect("198.51.100.66", login_max_failures=100, login_max_failures_per_client=4)
    for index in range(4):
        fail(attacker, f"victim{index}@example.com")
    assert_locked(attacker.post(TOKEN, data={"username": ALICE[0], "password": ALICE[1]}))
    assert_locked(attempt(attacker, *JOHN))
    bystander = connect("203.0.113.5", login_max_failures=100, login_max_failures_per_client=4)
    assert attempt(bystander, *ALICE).status_code == 200


def test_a_success_does_not_forget_the_clients_count(connect: Connect) -> None:
    client = connect(login_max_failures=100, login_max_failures_per_client=4)
    fail(client, ALICE[0], times=2)
    fail(client, "nobody@example.com")
    assert attempt(client, *JOHN).status_code == 200
    fail(client, "someone@example.com")  # the client's 4th failure
    assert_locked(attempt(client, *JOHN))


def test_forwarded_headers_do_not_change_the_client_address(connect: Connect) -> None:
    """The app itself trusts no X-Forwarded-For: the server decides (FORWARDED_ALLOW_IPS)."""
    client = connect(login_max_failures=100, login_max_failures_per_client=3)
    for index in range(3):
        response = client.post(
            TOKEN,
            data={"username": f"victim{index}@example.com", "password": WRONG},
            headers={"X-Forwarded-For": f"192.0.2.{index}", "X-Real-IP": f"192.0.2.{index}"},
        )
        assert response.status_code == 401
    assert_locked(
        client.post(TOKEN, data={"username": ALICE[0], "password": ALICE[1]}, headers={"X-Forwarded-For": "192.0.2.99"})
    )


# Shared by every instance


def test_two_app_instances_over_one_database_share_the_count(connect: Connect) -> None:
    first = connect()
    second = connect()
    fail(first, ALICE[0], times=3)
    fail(second, ALICE[0], times=2)
    assert_locked(attempt(first, *ALICE))
    assert_locked(attempt(second, *ALICE))


@pytest.mark.process
def test_two_servers_share_the_count_under_a_concurrent_burst(database_url: str) -> None:
    limits = {"LOGIN_MAX_FAILURES": "4", "LOGIN_LOCK_SECONDS": "30", "LOGIN_LOCK_MAX_SECONDS": "60"}
    servers = [start_uvicorn(server_env(database_url, RESET_DB="1", **limits))]
    try:
        servers[0].wait_healthy()
        servers.append(start_uvicorn(server_env(database_url, **limits)))
        servers[1].wait_healthy()

        def wrong(index: int) -> int:
            url = servers[index % 2].url
            return httpx.post(f"{url}{TOKEN}", data={"username": ALICE[0], "password": WRONG}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(wrong, range(8)))
        assert set(statuses) <= {401, 429}, statuses
        assert statuses.count(401) >= 4, statuses
        assert failures_of(database_url, ALICE[0]) == statuses.count(401)  # no count lost
        for server in servers:
            right = httpx.post(f"{server.url}{TOKEN}", data={"username": ALICE[0], "password": ALICE[1]})
            assert_locked(right, at_most=60)
    finally:
        stop_all(servers)


# Smart lockout: strangers cannot lock the owner out (docs: Security, "Smart lockout")


def test_strangers_failures_do_not_lock_out_an_address_the_owner_logged_in_from(connect: Connect) -> None:
    owner = connect("198.51.100.7")
    assert attempt(owner, *ALICE).status_code == 200  # the owner's address is now familiar
    stranger = connect("203.0.113.66")
    fail(stranger, ALICE[0], times=5)
    assert_locked(attempt(stranger, *ALICE))  # strangers, even with the right password, are locked
    assert_locked(attempt(connect("203.0.113.67"), *ALICE))  # and so is any other unfamiliar address
    assert attempt(owner, *ALICE).status_code == 200


def test_strangers_keeping_the_account_locked_for_good_never_lock_the_owner(
    connect: Connect, database_url: str
) -> None:
    """One wrong guess per lock window, for ever: the owner's address still gets in."""
    owner = connect("198.51.100.7", login_max_failures=2, login_lock_seconds=10, login_lock_max_seconds=20)
    assert attempt(owner, *ALICE).status_code == 200
    stranger = connect("203.0.113.66", login_max_failures=2, login_lock_seconds=10, login_lock_max_seconds=20)
    fail(stranger, ALICE[0], times=2)
    for _ in range(3):
        assert_locked(attempt(stranger, ALICE[0], WRONG))
        assert attempt(owner, *ALICE).status_code == 200
        end_locks(database_url)
        fail(stranger, ALICE[0])


def test_a_familiar_address_is_still_limited_on_its_own(connect: Connect) -> None:
    owner = connect("198.51.100.7")
    assert attempt(owner, *ALICE).status_code == 200
    fail(owner, ALICE[0], times=5)
    assert_locked(attempt(owner, *ALICE))
    stranger = connect("203.0.113.66")
    assert attempt(stranger, *ALICE).status_code == 200  # the familiar address's lock is its own


def test_the_owners_logins_do_not_reset_the_strangers_count(connect: Connect) -> None:
    """Distributed guessing stays capped per account: a success from a familiar address
    forgets that address's count, not the strangers'."""
    owner = connect("198.51.100.7")
    assert attempt(owner, *ALICE).status_code == 200
    for index in range(4):
        fail(connect(f"203.0.113.{index + 1}"), ALICE[0])
    assert attempt(owner, *ALICE).status_code == 200
    fail(connect("203.0.113.99"), ALICE[0])  # the strangers' 5th failure
    assert_locked(attempt(connect("203.0.113.100"), *ALICE))


def test_an_address_familiar_for_one_account_is_a_stranger_to_another(connect: Connect) -> None:
    client = connect("198.51.100.7")
    assert attempt(client, *ALICE).status_code == 200
    fail(connect("203.0.113.66"), JOHN[0], times=5)
    assert_locked(attempt(client, *JOHN))


def test_right_current_passwords_give_their_reservation_back(connect: Connect) -> None:
    """A password change checks the current password like a login: counted first, and given
    back when it is right, so changes never add up to a lock."""
    client = connect(login_max_failures=2, login_max_failures_per_client=2)
    token = attempt(client, *ALICE).json()["access_token"]
    passwords = [ALICE[1], "first-new-password", "second-new-password", "third-new-password"]
    for current, new in itertools.pairwise(passwords):
        body = {"current_password": current, "new_password": new}
        response = client.post("/api/users/me/password", json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 204, response.text
        token = attempt(client, ALICE[0], new).json()["access_token"]
