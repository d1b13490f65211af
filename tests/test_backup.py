"""`asgi-todo db backup` and `db restore` (docs: Backups), on both
databases: a round trip under a write load, and the restore's refusals."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo import migrate
from asgi_todo.app import create_app

from .helpers import ALICE, login, make_settings, postgres_database, scalar, server_login
from .servers import server_env, start_gunicorn

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def other_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second, empty database of the same kind: where a backup is restored."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/restored.db"
        return
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    with postgres_database(admin, f"asgi_todo_test_{uuid.uuid4().hex[:12]}") as url:
        yield url


def _db(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgi_todo", "db", *args],
        env=server_env(database_url, **env),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _ids(database_url: str) -> set[int]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(connection.scalars(sa.text("SELECT id FROM todos")))
    finally:
        engine.dispose()


class _Writer(threading.Thread):
    """Creates todos one after another until stopped; keeps the ids of those acknowledged."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.acknowledged: list[int] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            number = 0
            while not self.stop.is_set():
                number += 1
                response = http.post("/api/todos/", json={"text": f"under load {number}"}, headers=self.headers)
                if response.status_code == 201:
                    self.acknowledged.append(response.json()["id"])
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    def wait_for(self, count: int) -> None:
        while len(self.acknowledged) < count and self.is_alive():
            self.stop.wait(0.05)


def test_a_backup_under_load_restores_every_row_committed_before_it(
    database_url: str, other_url: str, tmp_path: Path
) -> None:
    server = start_gunicorn(server_env(database_url, RESET_DB="1"), workers=2)
    try:
        server.wait_healthy()
        writer = _Writer(server.url, server_login(server.url, *ALICE))
        writer.start()
        writer.wait_for(20)
        committed_before = set(writer.acknowledged)  # each answered, so committed, before the backup began

        made = _db("backup", str(tmp_path / "todo.backup"), database_url=database_url)

        writer.wait_for(len(writer.acknowledged) + 20)  # the writes went on during the backup, and after it
        writer.stop.set()
        writer.join(30)
    finally:
        server.stop()
    assert made.returncode == 0, made.stderr
    assert (
        made.stderr.strip() == f"asgi-todo: wrote a backup at revision {migrate.head()} to {tmp_path / 'todo.backup'}"
    )
    assert writer.failures == []

    restored = _db("restore", str(tmp_path / "todo.backup"), database_url=other_url)

    assert restored.returncode == 0, restored.stderr
    ids = _ids(other_url)
    assert committed_before <= ids
    assert ids <= _ids(database_url)
    assert len(ids) < len(_ids(database_url)), "the writes after the backup are not in it"
    check = _db("check", database_url=other_url)
    assert (check.returncode, check.stderr.strip()) == (
        0,
        f"asgi-todo: the database is at the code revision {migrate.head()}",
    )
    with TestClient(create_app(make_settings(other_url, reset_db=False))) as client:  # it serves, logins and all
        mine = client.get("/api/todos/", params={"limit": 100, "count": "true"}, headers=login(client, *ALICE))
        assert int(mine.headers["x-total-count"]) == scalar(other_url, "SELECT count(*) FROM todos WHERE owner_id = 2")
        assert (
            client.post("/api/todos/", json={"text": "after the restore"}, headers=login(client, *ALICE)).status_code
            == 201
        )


def test_a_restore_refuses_a_database_with_rows_without_yes(database_url: str, other_url: str, tmp_path: Path) -> None:
    backup = tmp_path / "demo.backup"
    assert _db("reset", "--yes", database_url=database_url).returncode == 0
    assert _db("backup", str(backup), database_url=database_url).returncode == 0
    assert _db("reset", "--yes", database_url=other_url).returncode == 0
    engine = sa.create_engine(other_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE todos SET text = 'kept' WHERE id = 1"))
    engine.dispose()

    refused = _db("restore", str(backup), database_url=other_url)

    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "asgi-todo: DATABASE_URL: the database holds 6 rows (users: 2, todos: 4); `db restore --yes` replaces them"
    ]
    assert scalar(other_url, "SELECT text FROM todos WHERE id = 1") == "kept"
    replaced = _db("restore", "--yes", str(backup), database_url=other_url)
    assert replaced.returncode == 0, replaced.stderr
    assert scalar(other_url, "SELECT text FROM todos WHERE id = 1") != "kept"


def test_a_restore_refuses_a_backup_newer_than_the_code(database_url: str, other_url: str, tmp_path: Path) -> None:
    backup = tmp_path / "future.backup"
    assert _db("reset", "--yes", database_url=database_url).returncode == 0
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    assert _db("backup", str(backup), database_url=database_url).returncode == 0

    refused = _db("restore", str(backup), database_url=other_url)

    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"asgi-todo: {backup}: the backup is at revision 9999, newer than this code's {migrate.head()};"
        " restore it with the release that wrote it"
    ]
    current = _db("current", database_url=other_url)  # nothing restored: PostgreSQL's still empty, no SQLite file
    assert current.stdout.startswith("base") or "there is no SQLite file" in current.stderr, current.stderr


def test_a_restore_refuses_a_file_that_is_no_backup(database_url: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"not a backup")
    refused = _db("restore", str(junk), database_url=database_url)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"asgi-todo: {junk}: not a backup of this service's database (no Alembic revision in it)"
    ]


def test_a_postgresql_backup_without_pg_dump_says_so_in_one_line(postgres_url: str, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    refused = _db("backup", str(tmp_path / "x.backup"), database_url=postgres_url, PATH=str(empty))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "asgi-todo: pg_dump not found on PATH: install the PostgreSQL client tools (Debian: postgresql-client)"
        " of the server's major version or newer"
    ]
    assert list(tmp_path.glob("*x.backup*")) == []
