"""A primary demoted under the app (docs/high-availability.md): a write refused with SQLSTATE
25006 ("cannot execute ... in a read-only transaction") is a 503 with Retry-After, never a 500;
`/readyz` is unready while the database reached is read-only; and the connections that led
to the read-only server are replaced at their next use, so the first write once a writable
server is back succeeds. The cluster test (tests/test_failover.py) does the same with Patroni.

A read-only database stands in for a demoted primary: `default_transaction_read_only` applies
to the sessions opened after it is set, as a standby's read-only mode applies to every one.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo.app import create_app

from .helpers import ALICE, login, make_settings

THREADS = 4  # SQL threads, each with a connection of its own


def _set_read_only(admin: sa.Engine, database: str, on: bool) -> None:
    with admin.connect() as connection:
        value = "on" if on else "off"
        connection.exec_driver_sql(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {value}')
        if on:  # a demotion restarts the server: every session it had is gone
            terminate = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            )
            connection.exec_driver_sql(terminate, (database,))


def test_a_demoted_primary_is_a_503_and_unready_and_its_connections_are_replaced(
    postgres_url: str, postgres_admin: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    database = sa.make_url(postgres_url).database
    assert database is not None
    with TestClient(
        create_app(make_settings(postgres_url, db_threads=THREADS, ready_cache_seconds=0)), follow_redirects=False
    ) as client:
        headers = login(client, *ALICE)
        assert client.post("/api/todos/", json={"text": "before"}, headers=headers).status_code == 201
        _set_read_only(postgres_admin, database, True)

        # The probe says this process should get no traffic: for a lost connection (an SQL
        # thread's first use of one the server closed), then for the read-only server.
        # Reads still work there; every write is a 503 to retry.
        probes = [client.get("/readyz") for _ in range(THREADS + 1)]
        assert {(probe.status_code, probe.json()["status"]) for probe in probes} == {(503, "not_ready")}
        reasons = [record.getMessage() for record in caplog.records if record.name == "asgi_todo.readiness"]
        assert "read-only" in reasons[-1], reasons  # the reason goes to the log (docs: Behind a proxy)
        assert client.get("/api/todos/", headers=headers).status_code == 200
        for _ in range(3):
            write = client.post("/api/todos/", json={"text": "refused"}, headers=headers)
            assert write.status_code == 503, write.text
            assert write.json() == {"detail": "Database unavailable"}
            assert write.headers["Retry-After"] == "5"

        # The server is writable again. The connections opened while it was read-only are
        # replaced before their next use, so the very next write succeeds.
        _set_read_only(postgres_admin, database, False)
        after = client.post("/api/todos/", json={"text": "after"}, headers=headers)
        assert after.status_code == 201, after.text
        assert client.get("/readyz").status_code == 200
        texts = [todo["text"] for todo in client.get("/api/todos/", headers=headers).json()]
    assert "refused" not in texts
    assert {"before", "after"} <= set(texts)
