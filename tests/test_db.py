"""The unit of work, start-up reset/update and its locks, the generated key; with real servers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from asgi_todo import db, startup
from asgi_todo.app import create_app
from asgi_todo.settings import Settings

from .bench.checkout import checkout_per_unit_of_work
from .helpers import ALICE, JOHN, SECRET_KEY, grant, make_settings, refresh_grant, scalar, server_login
from .servers import free_port, server_env, start_uvicorn, stop_all, wait_for_workers


def _count(url: str, table: str) -> int:
    return int(scalar(url, f"SELECT count(*) FROM {table}"))  # noqa: S608 - fixed names


# The unit of work


def test_no_connection_leaks_from_1000_requests(client: TestClient, john: dict[str, str]) -> None:
    paths = [
        ("GET", "/api/todos/", john, {200}),
        ("GET", "/api/todos/999", john, {404}),
        ("GET", "/api/todos/?limit=0", john, {422}),
        ("GET", "/api/todos/", {"Authorization": "Bearer nonsense"}, {401}),
        ("PATCH", "/api/todos/1", john, {200}),
        ("GET", "/health", {}, {200}),
        ("POST", "/api/users/signup", {}, {409, 429}),  # 429 past SIGNUP_MAX_PER_CLIENT
        ("GET", "/api/users/", john, {200}),
    ]
    for index in range(1000):
        method, path, headers, status = paths[index % len(paths)]
        body: dict[str, object] | None = None
        if method == "PATCH":
            body = {"completed": index % 2 == 0}
        elif method == "POST":
            body = {"email": JOHN[0], "password": "long enough"}
        response = client.request(method, path, headers=headers, json=body)
        assert response.status_code in status, (method, path, response.text)
    assert_only_the_sql_threads_hold_connections(client)


def test_failed_commit_is_a_500_and_nothing_is_stored(
    client: TestClient, john: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_commit(self: Session) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Session, "commit", failing_commit)
    response = client.post("/api/todos/", headers=john, json={"text": "never stored"})
    monkeypatch.undo()

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert "disk on fire" not in response.text
    texts = [todo["text"] for todo in client.get("/api/todos/?limit=100", headers=john).json()]
    assert "never stored" not in texts
    assert_only_the_sql_threads_hold_connections(client)


def assert_only_the_sql_threads_hold_connections(client: TestClient) -> None:
    """Each SQL thread keeps one connection; nothing else stays checked out of the pool."""
    database = client.app_state["services"].db
    assert 1 <= database.engine.pool.checkedout() <= database.threads


@pytest.mark.parametrize("checkout", [False, True], ids=["own", "checkout"])
def test_sql_threads_keep_their_connections_instead_of_a_checkout_per_request(
    settings: Settings, checkout: bool
) -> None:
    """At most one checkout per SQL thread, however many requests; the benchmark's switch to a
    checkout per unit of work (tests/bench/checkout.py) makes one per request."""
    checkouts: list[object] = []

    def checked_out(*_: object) -> None:
        checkouts.append(None)

    with checkout_per_unit_of_work() if checkout else nullcontext(), TestClient(create_app(settings)) as fresh:
        database = fresh.app_state["services"].db
        sa.event.listen(database.engine, "checkout", checked_out)
        for _ in range(20):
            assert fresh.get("/health").status_code == 200
        if checkout:
            assert len(checkouts) == 20
        else:
            assert 1 <= len(checkouts) <= database.threads


def test_unreachable_database_is_a_503_not_a_500(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(sqlite_url)
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {client.app_state['services'].tokens.issue(1)}"}
        # Pull the database out from under the running app.
        client.app_state["services"].db.engine.dispose()
        database_file = Path(sqlite_url.removeprefix("sqlite:///"))
        database_file.rename(tmp_path / "gone.db")
        database_file.mkdir()  # a directory where the file was: SQLite cannot open it
        health = client.get("/health")
        todos = client.get("/api/todos/", headers=headers)
    assert health.status_code == 503
    assert health.json()["database"] == "unavailable"
    assert todos.status_code == 503
    assert todos.json() == {"detail": "Database unavailable"}


# Start-up: reset and update, once per start


def test_prepare_runs_once_per_start(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reset = make_settings(database_url, reset_db=True)
    update = make_settings(database_url, reset_db=False, update_db=True)
    assert startup.prepare(reset, start="first") == "reset"
    assert startup.prepare(reset, start="first") == "skipped"  # a respawned worker of the same start
    assert startup.prepare(reset, start="second") == "skipped"  # another process of a start at the same moment
    assert startup.prepare(update, start="third") == "skipped"  # a reset has created everything already
    later = time.time() + startup.START_WINDOW_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert startup.prepare(reset, start="much-later") == "reset"
    assert startup.prepare(update, start="much-later") == "skipped"
    even_later = later + startup.START_WINDOW_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: even_later)
    assert startup.prepare(update, start="even-later") == "update"


@pytest.mark.process
def test_missing_schema_refuses_to_start_with_one_line(sqlite_url: str) -> None:
    env = server_env(sqlite_url)
    result = subprocess.run(
        [sys.executable, "-m", "asgi_todo", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("asgi-todo: DATABASE_URL: ")
    assert "UPDATE_DB=1" in lines[0]


@pytest.mark.process
def test_four_processes_starting_at_once_reset_once(database_url: str) -> None:
    env = server_env(database_url, RESET_DB="1")
    servers = [start_uvicorn(env) for _ in range(4)]
    try:
        for server in servers:
            server.wait_healthy()
        headers = server_login(servers[0].url, *JOHN)
        created = httpx.post(f"{servers[0].url}/api/todos/", headers=headers, json={"text": "made after start"})
        assert created.status_code == 201
        for server in servers:  # all serve the same data, the demo loaded once
            users = httpx.get(f"{server.url}/api/users/?count=true", headers=headers)
            assert users.headers["X-Total-Count"] == "2"
            todo = httpx.get(f"{server.url}/api/todos/{created.json()['id']}", headers=headers)
            assert todo.status_code == 200
    finally:
        stop_all(servers)
    outputs = [server.output() for server in servers]
    assert sum("RESET_DB: done" in output for output in outputs) == 1, outputs
    assert sum("RESET_DB: already done for this start, skipped" in output for output in outputs) == 3, outputs
    assert _count(database_url, "users") == 2


@pytest.mark.process
def test_respawned_worker_does_not_reset(sqlite_url: str) -> None:
    server = start_uvicorn(server_env(sqlite_url, RESET_DB="1"), workers=2)
    try:
        server.wait_healthy()
        headers = server_login(server.url, *ALICE)
        created = httpx.post(f"{server.url}/api/todos/", headers=headers, json={"text": "survives a respawn"})
        assert created.status_code == 201
        workers = wait_for_workers(server, 2)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replacement = wait_for_workers(server, 2, without={victim})
        assert len(replacement - workers) == 1
        server.wait_healthy()
        for _ in range(10):  # fresh connections land on both workers, the new one included
            todo = httpx.get(f"{server.url}/api/todos/{created.json()['id']}", headers=headers)
            assert todo.status_code == 200
    finally:
        server.stop()
    assert server.output().count("RESET_DB: done") == 1, server.output()


@pytest.mark.process
def test_fifty_concurrent_creates_are_all_stored(database_url: str) -> None:
    server = start_uvicorn(server_env(database_url, RESET_DB="1"))
    try:
        server.wait_healthy()
        headers = server_login(server.url, *ALICE)

        def create(index: int) -> int:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                return http.post("/api/todos/", headers=headers, json={"text": f"concurrent {index}"}).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(create, range(50)))
        assert statuses == [201] * 50
        listed = httpx.get(f"{server.url}/api/todos/?limit=100&count=true", headers=headers)
        assert listed.headers["X-Total-Count"] == "52"
        assert {f"concurrent {index}" for index in range(50)} <= {todo["text"] for todo in listed.json()}
    finally:
        server.stop()


# The generated key


@pytest.mark.process
def test_generated_key_is_shared_by_every_process(database_url: str) -> None:
    env = server_env(database_url, RESET_DB="1")
    del env["SECRET_KEY"]
    servers = [start_uvicorn(env) for _ in range(2)]
    try:
        for server in servers:
            server.wait_healthy()
        headers = server_login(servers[0].url, *JOHN)
        assert httpx.get(f"{servers[1].url}/api/auth/me", headers=headers).status_code == 200
    finally:
        stop_all(servers)
    if database_url.startswith("sqlite"):
        key_file = Path(database_url.removeprefix("sqlite:///") + ".secret")
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert len(key_file.read_text().strip()) >= 32
    else:
        engine = sa.create_engine(database_url)
        with engine.connect() as connection:
            key = connection.scalar(sa.text("SELECT value FROM app_state WHERE key = 'jwt_key'"))
        engine.dispose()
        assert key is not None
        assert len(key) >= 32


def test_marker_records_the_start(sqlite_url: str) -> None:
    startup.prepare(make_settings(sqlite_url), start="recorded")
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as connection:
        mark = json.loads(connection.scalar(sa.text("SELECT value FROM app_state WHERE key = 'startup'")) or "{}")
    engine.dispose()
    assert mark["start"] == "recorded"
    assert mark["action"] == "reset"


@pytest.mark.parametrize(("prepared", "threshold"), [(True, 5), (False, None)])
def test_db_prepared_statements_off_turns_off_psycopgs_server_side_prepare(
    postgres_url: str, prepared: bool, threshold: int | None
) -> None:
    # Off behind PgBouncer in transaction mode (test_cluster.py shows why).
    engine = db.make_engine(make_settings(postgres_url, db_prepared_statements=prepared), pool_size=1)
    try:
        with engine.connect() as connection:
            assert connection.connection.driver_connection.prepare_threshold == threshold  # type: ignore[union-attr]
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "secret_key",
    [pytest.param(None, id="generated-key"), pytest.param(SECRET_KEY, id="secret-key-set")],
)
def test_a_reset_makes_every_earlier_token_useless(database_url: str, secret_key: str | None) -> None:
    """Ids restart after a reset, so a token from before it would open the account of whoever
    signs up next with the same id (docs: Security, A reset ends every token)."""
    settings = make_settings(database_url, secret_key=secret_key)
    signup = {"email": "before@example.com", "password": "correct-horse-1"}
    with TestClient(create_app(settings)) as client:
        user = client.post("/api/users/signup", json=signup)
        assert user.status_code == 201, user.text
        old = grant(client, signup["email"], signup["password"])
    startup.prepare(settings, start="a-later-start", force=True)  # RESET_DB=1 at a later start
    with TestClient(create_app(make_settings(database_url, secret_key=secret_key, reset_db=False))) as client:
        newcomer = client.post("/api/users/signup", json={**signup, "email": "after@example.com"})
        assert newcomer.json()["id"] == user.json()["id"]  # the id came round again
        me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {old['access_token']}"})
        assert me.status_code == 401, me.text
        assert refresh_grant(client, old["refresh_token"]).status_code == 400
