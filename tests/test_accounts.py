"""Accounts under racing requests (docs: Security, "Revocation is final" and "Brute force"),
through real servers: uvicorn on SQLite, gunicorn with two workers on PostgreSQL. Each race
runs many trials; a trial that breaks a promise of the security model is collected, and the
test reports how many trials of how many broke it.

- Revocation is final: after a password change, a logout, a detected reuse or an account
  deletion commits, no token of that login (or user) can be rotated or used, whatever a thief
  rotating the same login did at the same moment.
- A login checks the password it verified: a login with the old password that is still
  running when a password change commits yields no session that works after the change.
- Limits are enforced before the work: concurrent wrong passwords cannot all be checked; at
  most the limit's worth of them reaches bcrypt, per account and per client address.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import pytest

from .helpers import refresh_grant
from .servers import Server, server_env, start_gunicorn, start_uvicorn

pytestmark = pytest.mark.process

TOKEN = "/api/auth/token"
TRIALS = 20
PASSWORD = "correct-horse-1"
NEW_PASSWORD = "battery-staple-2"
WRONG = "not-the-password"
# Limits far away, for the races that are not about them.
NO_LIMITS = {"LOGIN_MAX_FAILURES": "1000", "LOGIN_MAX_FAILURES_PER_CLIENT": "100000"}
# Every trial signs up its own users from this one address: the sign-up limit is not the subject.
SIGN_UPS = {"SIGNUP_MAX_PER_CLIENT": "100000"}


def start_server(database_url: str, **extra: str) -> Server:
    """uvicorn on SQLite; gunicorn with two workers (two processes racing) on PostgreSQL."""
    env = server_env(database_url, RESET_DB="1", **{**SIGN_UPS, **extra})
    server = start_uvicorn(env) if database_url.startswith("sqlite") else start_gunicorn(env, workers=2)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def racing_server(database_url: str) -> Iterator[Server]:
    server = start_server(database_url, BCRYPT_ROUNDS="4", **NO_LIMITS)
    yield server
    server.stop()


def at_once(server: Server, calls: list[Callable[[httpx.Client], Any]]) -> list[Any]:
    """Each call on its own connection (opened first), all released together."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[httpx.Client], Any]) -> Any:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            http.get("/health")
            barrier.wait()
            return call(http)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def signup(http: httpx.Client, email: str) -> None:
    response = http.post("/api/users/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text


def password_grant(http: httpx.Client, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = http.post(TOKEN, data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    token: dict[str, Any] = response.json()
    return token


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


def still_works(http: httpx.Client, token: dict[str, Any]) -> list[str]:
    """What of a session still works: its access token, its refresh token."""
    working = []
    if http.get("/api/auth/me", headers=bearer(token)).status_code != 401:
        working.append("access token")
    if refresh_grant(http, token["refresh_token"]).status_code != 400:
        working.append("refresh token")
    return working


def assert_no_trial_broke(broken: list[str], trials: int) -> None:
    assert not broken, f"{len(broken)} of {trials} cases broke the promise: {broken[:5]}"


# 1 and 8. Revocation is final, for the refresh chain and the access tokens alike.


def _change_password(http: httpx.Client, victim: dict[str, Any]) -> int:
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    return http.post("/api/users/me/password", json=body, headers=bearer(victim)).status_code


def _logout(http: httpx.Client, victim: dict[str, Any]) -> int:
    body = {"refresh_token": victim["refresh_token"]}  # any token of the login names it
    return http.post("/api/auth/logout", json=body, headers=bearer(victim)).status_code


def _reuse(http: httpx.Client, victim: dict[str, Any]) -> int:
    """The victim presents their refresh token, which the thief has already rotated: a reuse."""
    return int(refresh_grant(http, victim["refresh_token"]).status_code)


def _delete_account(http: httpx.Client, victim: dict[str, Any]) -> int:
    return http.delete("/api/users/me", headers=bearer(victim)).status_code


REVOCATIONS = {
    "change-password": (_change_password, 204),
    "logout": (_logout, 204),
    "reuse": (_reuse, 400),
    "delete-account": (_delete_account, 204),
}


@pytest.mark.parametrize("action", list(REVOCATIONS))
def test_revocation_is_final_while_a_thief_rotates_the_same_login(racing_server: Server, action: str) -> None:
    """The thief holds a copy of the login's refresh token and rotates it back to back; the
    victim revokes at a random moment of that. Once the victim's request has answered, the
    thief's newest pair must be dead: no refresh, no access."""
    revoke, revoked_status = REVOCATIONS[action]
    broken = []
    for trial in range(TRIALS):
        email = f"victim-{action}-{trial}@example.com"
        with httpx.Client(base_url=racing_server.url, timeout=60) as http:
            signup(http, email)
            victim = password_grant(http, email)
            thief_start = victim  # a copy of the victim's tokens
            if action == "reuse":  # the thief rotates first, so the victim's refresh token is used
                rotated = refresh_grant(http, victim["refresh_token"])
                assert rotated.status_code == 200, rotated.text
                thief_start = rotated.json()
        revoked = threading.Event()

        def thief(http: httpx.Client, latest: dict[str, Any] = thief_start, revoked: threading.Event = revoked) -> Any:
            while True:
                after = revoked.is_set()
                response = refresh_grant(http, latest["refresh_token"])
                if response.status_code != 200:
                    return latest
                latest = response.json()
                if after:
                    return latest  # rotated after the revocation had answered: still_works says so

        def owner(http: httpx.Client, victim: dict[str, Any] = victim, revoked: threading.Event = revoked) -> Any:
            time.sleep(random.uniform(0, 0.03))
            status = revoke(http, victim)
            revoked.set()
            return status

        latest, status = at_once(racing_server, [thief, owner])
        assert status == revoked_status, (trial, status)
        with httpx.Client(base_url=racing_server.url, timeout=60) as http:
            working = still_works(http, latest)
        if working:
            broken.append(f"trial {trial}: the thief's {' and '.join(working)}")
    assert_no_trial_broke(broken, TRIALS)


# 2. A login checks the password it verified.


def test_a_login_racing_a_password_change_yields_no_session_that_outlives_it(database_url: str) -> None:
    """Logins with the old password spread over the time a password change takes: any that
    succeeds must not work once the change has answered. bcrypt costs more here, so that a
    login's check overlaps the change's commit."""
    server = start_server(database_url, BCRYPT_ROUNDS="8", **NO_LIMITS)
    logins = 8
    broken = []
    try:
        for trial in range(TRIALS):
            email = f"changer-{trial}@example.com"
            with httpx.Client(base_url=server.url, timeout=60) as http:
                signup(http, email)
                victim = password_grant(http, email)

            def change(http: httpx.Client, victim: dict[str, Any] = victim) -> Any:
                return _change_password(http, victim)

            def login(delay: float, email: str = email) -> Callable[[httpx.Client], Any]:
                def run(http: httpx.Client) -> Any:
                    time.sleep(delay)
                    return http.post(TOKEN, data={"username": email, "password": PASSWORD})

                return run

            calls = [change, *(login(index * 0.012) for index in range(logins))]
            status, *answers = at_once(server, calls)
            assert status == 204, status
            with httpx.Client(base_url=server.url, timeout=60) as http:
                for index, answer in enumerate(answers):
                    assert answer.status_code in (200, 401), answer.text
                    working = still_works(http, answer.json()) if answer.status_code == 200 else []
                    if working:
                        broken.append(f"trial {trial}, login {index}: {' and '.join(working)}")
    finally:
        server.stop()
    assert_no_trial_broke(broken, TRIALS * logins)


# 3. Limits are enforced before the work, atomically.


def _wrong_login(email: str, address: str) -> Callable[[httpx.Client], int]:
    def run(http: httpx.Client) -> int:
        form = {"username": email, "password": WRONG}
        return http.post(TOKEN, data=form, headers={"X-Forwarded-For": address}).status_code

    return run


BURSTS = 4
BURST = 40


def test_concurrent_wrong_passwords_for_one_account_are_checked_at_most_the_limit(database_url: str) -> None:
    """40 wrong passwords for one account released at once, each from its own address (so the
    client limit is not what stops them): only LOGIN_MAX_FAILURES of them get their password
    checked (a 401); the rest are refused before bcrypt (a 429), and then so is the right one."""
    server = start_server(database_url, BCRYPT_ROUNDS="8", LOGIN_MAX_FAILURES="5")
    broken = []
    try:
        for burst in range(BURSTS):
            email = f"target-{burst}@example.com"
            with httpx.Client(base_url=server.url, timeout=60) as http:
                signup(http, email)
            calls = [_wrong_login(email, f"198.51.{burst}.{index + 1}") for index in range(BURST)]
            statuses = at_once(server, calls)
            assert set(statuses) <= {401, 429}, statuses
            if statuses.count(401) > 5:
                broken.append(f"burst {burst}: {statuses.count(401)} passwords checked")
            with httpx.Client(base_url=server.url, timeout=60) as http:
                form = {"username": email, "password": PASSWORD}
                right = http.post(TOKEN, data=form, headers={"X-Forwarded-For": f"203.0.{burst}.1"})
            if right.status_code != 429:
                broken.append(f"burst {burst}: the right password got {right.status_code} after the burst")
    finally:
        server.stop()
    assert_no_trial_broke(broken, BURSTS)


def test_concurrent_wrong_passwords_from_one_client_are_checked_at_most_the_limit(database_url: str) -> None:
    """40 wrong passwords from one address, each for another account, released at once: only
    LOGIN_MAX_FAILURES_PER_CLIENT of them get their password checked."""
    server = start_server(database_url, BCRYPT_ROUNDS="8", LOGIN_MAX_FAILURES_PER_CLIENT="20")
    broken = []
    try:
        for burst in range(BURSTS):
            address = f"192.0.2.{burst + 1}"
            calls = [_wrong_login(f"guess-{burst}-{index}@example.com", address) for index in range(BURST)]
            statuses = at_once(server, calls)
            assert set(statuses) <= {401, 429}, statuses
            if statuses.count(401) > 20:
                broken.append(f"burst {burst}: {statuses.count(401)} passwords checked")
    finally:
        server.stop()
    assert_no_trial_broke(broken, BURSTS)
