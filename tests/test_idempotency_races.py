"""Idempotency-Key through a real multi-worker gunicorn server, on both databases (docs:
Retries): concurrent identical requests with one key make one row, and a
worker killed between its commit and its response leaves one row that a retry is answered with.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import httpx2 as httpx
import pytest

from .helpers import ALICE, scalar, server_login
from .servers import Server, children, server_env, start_gunicorn, wait_for_workers

pytestmark = pytest.mark.process

RACERS = 20
WORKERS = 2


def _serve(database_url: str, **extra: str) -> Iterator[Server]:
    server = start_gunicorn(server_env(database_url, RESET_DB="1", **extra), workers=WORKERS)
    try:
        server.wait_healthy()
        wait_for_workers(server, WORKERS)
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    yield from _serve(database_url)


def _post_together(url: str, path: str, *, json: Mapping[str, object], headers: dict[str, str]) -> list[httpx.Response]:
    """RACERS identical requests, each on its own connection, released together."""
    start = Barrier(RACERS)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as http:
            start.wait()
            return http.post(path, json=json, headers=headers)

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(post, range(RACERS)))


def _check_race(answers: list[httpx.Response], *, name_it: str, server: Server) -> set[object]:
    """Every answer a 201 naming the one row, or a 409 (the first still in flight); the names."""
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {201, 409}, (statuses, server.output()[-3000:])
    assert 201 in statuses, statuses
    created = [answer for answer in answers if answer.status_code == 201]
    replays = [answer for answer in created if answer.headers.get("idempotent-replayed") == "true"]
    assert len(created) - len(replays) == 1, "exactly one answer is the original"
    for conflict in (answer for answer in answers if answer.status_code == 409):
        assert conflict.json()["detail"].startswith("A request with this Idempotency-Key is still being processed")
        assert int(conflict.headers["retry-after"]) >= 1
    assert len({answer.headers["location"] for answer in created}) == 1
    return {answer.json()[name_it] for answer in created}


def test_twenty_identical_creates_with_one_key_make_one_todo(server: Server, database_url: str) -> None:
    alice = server_login(server.url, *ALICE)
    key = str(uuid.uuid4())
    before = scalar(database_url, "SELECT count(*) FROM todos")
    body = {"text": "bought milk exactly once"}

    answers = _post_together(server.url, "/api/todos/", json=body, headers={**alice, "Idempotency-Key": f'"{key}"'})

    ids = _check_race(answers, name_it="id", server=server)
    assert scalar(database_url, "SELECT count(*) FROM todos") == before + 1
    assert ids == {scalar(database_url, "SELECT max(id) FROM todos")}
    assert "Traceback" not in server.output()


def test_twenty_identical_sign_ups_with_one_key_make_one_user(server: Server, database_url: str) -> None:
    key = str(uuid.uuid4())
    body = {"email": f"once-{key[:8]}@example.com", "password": "a long enough password"}

    answers = _post_together(server.url, "/api/users/signup", json=body, headers={"Idempotency-Key": f'"{key}"'})

    ids = _check_race(answers, name_it="id", server=server)
    assert scalar(database_url, f"SELECT count(*) FROM users WHERE email = '{body['email']}'") == 1  # noqa: S608
    assert len(ids) == 1
    assert "Traceback" not in server.output()


def _wait_for_a_new_worker(server: Server, workers: set[int], timeout: float = 30) -> None:
    """Until gunicorn has replaced a worker of `workers` (the one that was killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = children(server.process.pid)
        if len(now) == WORKERS and now != workers:
            return
        time.sleep(0.1)
    raise AssertionError(f"no worker was replaced:\n{server.output()[-3000:]}")


def test_a_worker_killed_between_commit_and_response_then_a_retry_makes_one_todo(
    database_url: str, tmp_path: Path
) -> None:
    """The test-only crash point (asgi_todo.idempotency, `ASGI_TODO_TEST_KILL_AFTER_COMMIT`):
    a worker that finds the named file removes it and sends itself SIGKILL right after the
    write's commit, before a byte of the response; only the first request finds the file."""
    trigger = tmp_path / "kill-once"
    trigger.touch()
    for server in _serve(database_url, ASGI_TODO_TEST_KILL_AFTER_COMMIT=str(trigger)):
        alice = server_login(server.url, *ALICE)
        workers = wait_for_workers(server, WORKERS)
        before = scalar(database_url, "SELECT count(*) FROM todos")
        headers = {**alice, "Idempotency-Key": f'"{uuid.uuid4()}"'}
        body = {"text": "sent once, retried once"}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            with pytest.raises(httpx.TransportError):  # the worker died: no response at all
                http.post("/api/todos/", json=body, headers=headers)
            assert not trigger.exists()
            assert scalar(database_url, "SELECT count(*) FROM todos") == before + 1, "committed before the kill"
            _wait_for_a_new_worker(server, workers)

            retry = http.post("/api/todos/", json=body, headers=headers)

        assert retry.status_code == 201, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["id"] == scalar(database_url, "SELECT max(id) FROM todos")
        assert retry.json()["text"] == body["text"]
        assert scalar(database_url, "SELECT count(*) FROM todos") == before + 1
