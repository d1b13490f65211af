"""Liveness is not readiness: `/livez`, `/readyz`, and the drain on SIGTERM (docs: Deployment, "Probes
and a graceful stop")."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo import migrate, startup
from asgi_todo.app import create_app
from asgi_todo.drain import Drain
from asgi_todo.settings import Settings

from .helpers import ALICE, Workers, login, make_settings, server_login
from .servers import Server, server_env, start_gunicorn, start_serve, wait_for_workers

DRAIN_SECONDS = 4
NOT_READY = {"status": "not_ready", "detail": "not ready: the reason is in the service's log"}
_CACHE = 1.0  # READY_CACHE_SECONDS' default


def test_livez_and_readyz_answer_200_when_all_is_well(client: TestClient) -> None:
    live = client.get("/livez")
    ready = client.get("/readyz")
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "detail": ""})


def test_without_the_database_the_process_is_alive_but_not_ready(sqlite_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(sqlite_url))) as client:
        # Pull the database out from under the running app (as test_db does).
        client.app_state["services"].db.engine.dispose()
        database_file = Path(sqlite_url.removeprefix("sqlite:///"))
        database_file.rename(tmp_path / "gone.db")
        database_file.mkdir()
        live = client.get("/livez")
        ready = client.get("/readyz")
        health = client.get("/health")
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert ready.status_code == 503
    assert ready.json() == NOT_READY
    assert health.status_code == 503  # /health keeps the original's meaning


def test_readyz_tells_a_schema_this_code_cannot_use_to_the_log_only(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Anonymous callers learn ready or not ready, never the revision or the command to run
    (docs: Behind a proxy, Probes behind a balancer): the reason goes to the log, once per
    change, and to `db check`."""
    with TestClient(create_app(settings)) as client:
        engine = client.app_state["services"].db.engine
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
        time.sleep(_CACHE)  # the default READY_CACHE_SECONDS: the last check is forgotten
        with caplog.at_level(logging.WARNING, logger="asgi_todo.readiness"):
            ready = [client.get("/readyz") for _ in range(3)]
            time.sleep(_CACHE)
            again = client.get("/readyz")
        live = client.get("/livez")
    assert [response.status_code for response in [*ready, again]] == [503] * 4
    assert {response.text for response in [*ready, again]} == {json.dumps(NOT_READY, separators=(",", ":"))}
    assert "0002" not in again.text
    assert "upgrade" not in again.text
    reasons = [record.getMessage() for record in caplog.records if record.name == "asgi_todo.readiness"]
    assert reasons == [
        f"not ready: the database is at revision 0002, behind this code's {migrate.head()};"
        " run `asgi-todo db upgrade` (or start once with UPDATE_DB=1)"
    ]
    assert live.status_code == 200


def _counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every database check of readiness (the schema's status), each slowed to 50 ms so
    that concurrent probes overlap one."""
    checks: list[float] = []
    status = migrate.status

    def counting(connection: sa.Connection) -> migrate.Status:
        checks.append(time.monotonic())
        time.sleep(0.05)
        return status(connection)

    monkeypatch.setattr(migrate, "status", counting)
    return checks


def _probe(client: TestClient, *, threads: int, each: int | None = None, seconds: float | None = None) -> set[int]:
    """Probes from `threads` threads at once: `each` requests, or for `seconds`; the statuses."""
    statuses: set[int] = set()
    deadline = time.monotonic() + (seconds or 0)

    def run() -> None:
        count = 0
        while (each is not None and count < each) or (seconds is not None and time.monotonic() < deadline):
            statuses.add(client.get("/readyz").status_code)
            count += 1

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(run) for _ in range(threads)]:
            future.result()
    return statuses


def test_readyz_checks_the_database_once_per_ready_cache_seconds(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe cost 6.3 transactions before its cache: now at most one check per
    READY_CACHE_SECONDS per process, whatever the probe rate; probes that arrive while a
    check runs wait for that one (docs: Behind a proxy, Probes behind a balancer)."""
    checks = _counting_checks(monkeypatch)
    with TestClient(create_app(make_settings(database_url, reset_db=False, ready_cache_seconds=60))) as client:
        checks.clear()  # start-up's own
        assert _probe(client, threads=8, each=5) == {200}
        assert len(checks) == 1
    checks = _counting_checks(monkeypatch)
    with TestClient(create_app(make_settings(database_url, reset_db=False, ready_cache_seconds=0.3))) as client:
        checks.clear()
        assert _probe(client, threads=4, seconds=1.5) == {200}
    assert 2 <= len(checks) <= 1.5 / 0.3 + 1, checks
    assert all(later - earlier >= 0.3 for earlier, later in pairwise(checks)), checks


def test_while_draining_only_readiness_fails(settings: Settings) -> None:
    drain = Drain()
    with TestClient(create_app(settings, drain=drain)) as client:
        headers = login(client, *ALICE)
        assert client.get("/readyz").status_code == 200
        drain.begin()
        ready = client.get("/readyz")
        created = client.post("/api/todos/", json={"text": "while draining"}, headers=headers)
        others = [client.get(path).status_code for path in ("/livez", "/health", "/")]
    assert ready.status_code == 503
    assert ready.json() == NOT_READY
    assert created.status_code == 201
    assert others == [200, 200, 200]


class _Prober(Workers):
    """From SIGTERM on, in two threads, each request on a new connection: `/readyz`, and a
    todo created. Records (seconds since the signal, what came back: a status, or the name of
    the transport error once the server stopped listening)."""

    def __init__(self, server: Server, headers: dict[str, str], *, pid: int | None = None) -> None:
        self.server = server
        self.headers = headers
        self.pid = pid or server.process.pid  # the process signalled: the server, or one worker
        self.readiness: list[tuple[float, int | str]] = []
        self.writes: list[tuple[float, int | str]] = []
        self.signalled = 0.0
        super().__init__(["readyz", "write"])

    def __enter__(self) -> _Prober:
        os.kill(self.pid, signal.SIGTERM)
        self.signalled = time.monotonic()
        return super().__enter__()

    def _run(self, kind: str) -> None:
        found = self.readiness if kind == "readyz" else self.writes
        n = 0
        while not self._stop.is_set() and self.server.process.poll() is None:
            n += 1
            outcome: int | str
            try:
                if kind == "readyz":
                    response = httpx.get(f"{self.server.url}/readyz", timeout=10)
                else:
                    body = {"text": f"drain {n}"}
                    response = httpx.post(f"{self.server.url}/api/todos/", json=body, headers=self.headers, timeout=10)
                outcome = response.status_code
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            found.append((time.monotonic() - self.signalled, outcome))
            time.sleep(0.05)


def _assert_refused_only_after_the_drain(probes: _Prober) -> None:
    """No request failed during the drain. When it ends, uvicorn closes the connections it
    has accepted and not yet read a request from (as at any stop: a balancer has stopped
    sending by then); those, and connections to a closed port, fail, never earlier."""
    failed = [at for at, outcome in [*probes.readiness, *probes.writes] if isinstance(outcome, str)]
    assert all(at >= DRAIN_SECONDS for at in failed), (probes.readiness, probes.writes)


@pytest.mark.process
@pytest.mark.parametrize("launcher", ["serve", "gunicorn"])
def test_sigterm_turns_readiness_off_serves_on_then_exits_0(sqlite_url: str, launcher: str) -> None:
    # GRACEFUL_TIMEOUT shorter than the drain: the master's limit is their sum, so it must not
    # kill the draining workers.
    env = server_env(sqlite_url, RESET_DB="1", DRAIN_SECONDS=str(DRAIN_SECONDS), GRACEFUL_TIMEOUT="2")
    server = start_serve(env) if launcher == "serve" else start_gunicorn(env, workers=2)
    try:
        server.wait_healthy()
        headers = server_login(server.url, *ALICE)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        with _Prober(server, headers) as probes:
            server.process.wait(DRAIN_SECONDS + 15)
    finally:
        server.stop()
    answered = [outcome for _, outcome in probes.readiness if isinstance(outcome, int)]
    # Once off (every worker gets the signal at once: gunicorn's master passes it on), readiness
    # stays off until the process stops listening.
    assert 503 in answered, probes.readiness
    assert set(answered[answered.index(503) :]) == {503}, probes.readiness
    writes = [(at, outcome) for at, outcome in probes.writes if isinstance(outcome, int)]
    assert {outcome for _, outcome in writes} == {201}, probes.writes
    _assert_refused_only_after_the_drain(probes)
    # Writes kept succeeding well after readiness went off: the drain, not an early stop.
    first_503 = min(at for at, outcome in probes.readiness if outcome == 503)
    assert sum(at > first_503 for at, _ in writes) >= 5, probes.writes
    assert server.process.returncode == 0, server.output()[-3000:]
    assert "not ready any more" in server.output()
    assert "SIGKILL" not in server.output()


@pytest.mark.process
def test_sigterm_to_one_gunicorn_worker_drains_it_and_the_master_replaces_it(sqlite_url: str) -> None:
    env = server_env(sqlite_url, RESET_DB="1", DRAIN_SECONDS=str(DRAIN_SECONDS), GRACEFUL_TIMEOUT="10")
    server = start_gunicorn(env, workers=1)
    try:
        server.wait_healthy()
        (worker,) = wait_for_workers(server, 1)
        headers = server_login(server.url, *ALICE)
        with _Prober(server, headers, pid=worker) as probes:
            wait_for_workers(server, 1, without={worker}, timeout=DRAIN_SECONDS + 20)
            server.wait_healthy()
            deadline = time.monotonic() + 20
            while httpx.get(f"{server.url}/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert server.process.poll() is None  # the master serves on
    finally:
        server.stop()
    answered = [outcome for _, outcome in probes.readiness]
    assert 503 in answered, probes.readiness
    assert answered[-1] == 200, probes.readiness  # the new worker is ready
    # Between the old worker's exit and the new one's start the master's socket queues the
    # connections, so every write answered succeeded.
    assert {outcome for _, outcome in probes.writes if isinstance(outcome, int)} == {201}, probes.writes
    _assert_refused_only_after_the_drain(probes)
    assert f"Worker exiting (pid: {worker})" in server.output()
    assert f"Worker (pid:{worker})" not in server.output()  # "exited with code ..." or "was sent ..."


def _transactions(database_url: str) -> int:
    """The database's transactions so far, once every other connection to it has ended (a
    backend reports its counts when it exits)."""
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            deadline = time.monotonic() + 10
            others = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            while connection.execute(sa.text(others)).scalar() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            count = connection.execute(
                sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
            ).scalar()
            return int(count or 0)
    finally:
        engine.dispose()


def _serve_and_probe(database_url: str, *, seconds: float) -> tuple[int, int]:
    """Transactions of one `asgi-todo serve` from start to stop, with /readyz probed from 4
    threads for `seconds` in between; and the number of probes."""
    before = _transactions(database_url)
    server = start_serve(server_env(database_url))
    statuses: list[int] = []
    try:
        server.wait_healthy()
        deadline = time.monotonic() + seconds

        def probe() -> None:
            with httpx.Client(base_url=server.url) as http:
                while time.monotonic() < deadline:
                    statuses.append(http.get("/readyz").status_code)

        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(probe) for _ in range(4)]:
                future.result()
        assert set(statuses) <= {200}, statuses
    finally:
        assert server.stop() == 0, server.output()[-3000:]
    return _transactions(database_url) - before, len(statuses)


@pytest.mark.process
def test_probes_cost_the_database_one_check_a_second_through_a_real_server(postgres_url: str) -> None:
    """A /readyz cost 6.3 transactions on PostgreSQL before its cache: probes as fast as 4
    threads send them for 4 s now cost at most one check per READY_CACHE_SECONDS (1), each a
    few transactions."""
    startup.prepare(make_settings(postgres_url), start="demo")
    started = _serve_and_probe(postgres_url, seconds=0)[0]
    transactions, probes = _serve_and_probe(postgres_url, seconds=4)
    probed = transactions - started
    print(f"start and stop: {started} transactions; {probes} probes in 4 s: {probed} more")
    assert probes >= 40
    assert probed <= 10 * (4 + 2), probed
