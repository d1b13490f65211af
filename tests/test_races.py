"""Racing requests through real servers (docs: Security, "Races with your own deletion"):
whatever a client sends at the same time, no answer is a 5xx. uvicorn serves SQLite, gunicorn
with two workers PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from threading import Barrier

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from .servers import Server, server_env, start_gunicorn, start_uvicorn

pytestmark = pytest.mark.process

TRIALS = 10
PASSWORD = "a long enough password"


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    """uvicorn on SQLite, gunicorn with 2 workers on PostgreSQL, on the demo data."""
    env = server_env(database_url, RESET_DB="1")
    started = start_uvicorn(env) if database_url.startswith("sqlite") else start_gunicorn(env, workers=2)
    try:
        started.wait_healthy()
        yield started
    finally:
        started.stop()


def new_account(http: httpx.Client) -> dict[str, str]:
    """A fresh account's bearer header."""
    email = f"racer-{uuid.uuid4().hex[:12]}@example.com"
    assert http.post("/api/users/signup", json={"email": email, "password": PASSWORD}).status_code == 201
    response = http.post("/api/auth/token", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _race(http: httpx.Client, headers: dict[str, str], start: Barrier, kind: int) -> int:
    """One of the racing requests: kind 0 deletes the account, odd kinds create, even rename."""
    start.wait()
    if kind == 0:
        return http.delete("/api/users/me", headers=headers).status_code
    if kind % 2:
        return http.post("/api/todos/", json={"text": f"todo {kind}"}, headers=headers).status_code
    return http.patch("/api/users/me", json={"fname": f"name {kind}"}, headers=headers).status_code


def test_deleting_your_account_while_your_requests_write_is_never_a_5xx(server: Server, database_url: str) -> None:
    """Creates, renames and a deletion released together: each answer is a success or a 401,
    and the deletion leaves nothing of the account behind."""
    engine = sa.create_engine(database_url)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http, ThreadPoolExecutor(9) as pool:
            for trial in range(TRIALS):
                headers = new_account(http)
                me = http.get("/api/auth/me", headers=headers).json()
                statuses = list(pool.map(partial(_race, http, headers, Barrier(9)), range(9)))
                assert statuses[0] == 204, (trial, statuses, server.output()[-3000:])
                assert set(statuses[1:]) <= {200, 201, 401}, (trial, statuses, server.output()[-3000:])
                assert http.get("/api/auth/me", headers=headers).status_code == 401
                with engine.connect() as connection:
                    left = connection.execute(sa.text("SELECT count(*) FROM todos WHERE owner_id = :id"), me)
                    assert left.scalar_one() == 0, trial
    finally:
        engine.dispose()
    assert "Internal Server Error" not in server.output()
    assert "Traceback" not in server.output()
