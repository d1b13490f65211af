"""Alembic migrations: no drift from the models, both ways with data, the FastAPI original's
and pre-Alembic databases upgraded in place, the start-up refusals, the CLI, the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from starlette.testclient import TestClient

from asgi_todo import db, migrate, startup
from asgi_todo.app import create_app
from asgi_todo.models import Base
from asgi_todo.settings import ConfigError, Settings

from .helpers import ALICE, JOHN, login, make_settings, require, utc
from .servers import free_port, server_env, start

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
TABLES = tuple(table.name for table in Base.metadata.sorted_tables)


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """Migrations start from a database with nothing in it, not from the prepared one."""
    return empty_database_url


def _settings(database_url: str, **overrides: object) -> Settings:
    return make_settings(database_url, reset_db=False, **overrides)


def _connect(settings: Settings) -> sa.Connection:
    engine = db.make_engine(settings, pool_size=1)
    return engine.connect()


def _close(connection: sa.Connection) -> None:
    connection.close()
    connection.engine.dispose()


def _migrate(settings: Settings, revision: str = "head", *, down: bool = False) -> None:
    connection = _connect(settings)
    try:
        if down:
            migrate.downgrade(connection, settings, revision, drop_rows=True)
        else:
            migrate.upgrade(connection, settings, revision)
    finally:
        _close(connection)


def _status(settings: Settings) -> migrate.Status:
    connection = _connect(settings)
    try:
        return migrate.status(connection)
    finally:
        _close(connection)


def _drift(settings: Settings) -> list[Any]:
    connection = _connect(settings)
    try:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        differences: list[Any] = compare_metadata(context, Base.metadata)
        return differences
    finally:
        _close(connection)


def _execute(settings: Settings, *statements: str) -> None:
    connection = _connect(settings)
    try:
        for statement in statements:
            connection.exec_driver_sql(statement)
        connection.commit()
    finally:
        _close(connection)


def _load(settings: Settings, *names: str) -> None:
    """Run the fixture files' statements, comments left out."""
    statements = []
    for name in names:
        for chunk in (FIXTURES / name).read_text().split(";\n"):
            statement = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
            if statement:
                statements.append(statement)
    _execute(settings, *statements)


def _load_original(settings: Settings) -> None:
    kind = "sqlite" if settings.is_sqlite else "postgresql"
    _load(settings, f"original_{kind}.sql", "original_rows.sql")


def _rows(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every row of our tables that exist, by table, ordered by the first column."""
    connection = _connect(settings)
    try:
        metadata = sa.MetaData()
        metadata.reflect(connection, only=lambda name, _: name in TABLES)
        return {
            name: [dict(row._mapping) for row in connection.execute(sa.select(table).order_by(*table.primary_key))]
            for name, table in metadata.tables.items()
        }
    finally:
        _close(connection)


def _asgi_todo(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgi_todo", *args],
        env=server_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


# No drift


def test_a_freshly_upgraded_database_matches_the_models(database_url: str) -> None:
    settings = _settings(database_url)
    _migrate(settings, "0001")
    assert _drift(settings), "the comparison must see that 0001 lacks due_date"
    _migrate(settings)
    assert _drift(settings) == []
    assert _status(settings).verdict == "current"


def test_reset_builds_the_same_schema_at_head(database_url: str) -> None:
    settings = make_settings(database_url)
    startup.prepare(settings, start="reset")
    assert _drift(settings) == []
    assert _status(settings).current == migrate.head()


# Both ways, with data


def _project(rows: dict[str, list[dict[str, Any]]], like: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """`rows` cut down to the tables and columns that `like` has."""
    return {
        name: [{key: row[key] for key in (like[name][0] if like[name] else row)} for row in table]
        for name, table in rows.items()
        if name in like
    }


@pytest.mark.parametrize("populated", [pytest.param(False, id="empty"), pytest.param(True, id="populated")])
def test_every_revision_goes_down_and_up_with_its_rows(database_url: str, populated: bool) -> None:
    settings = make_settings(database_url, reset_db=populated, update_db=not populated)
    startup.prepare(settings, start="round-trip")
    if populated:
        with TestClient(create_app(_settings(database_url))) as client:
            alice = login(client, *ALICE)
            response = client.post("/api/todos/", json={"text": "dated", "due_date": "2026-12-24"}, headers=alice)
            assert response.status_code == 201, response.text
        # 0003 drops logins and refresh tokens both ways, by design (its docstring).
        _execute(settings, "DELETE FROM refresh_tokens", "DELETE FROM logins")
    at_head = _rows(settings)
    assert bool(at_head["todos"]) == populated

    revisions = [script.revision for script in migrate.scripts().walk_revisions()]  # newest first
    for older in revisions[1:]:
        _migrate(settings, older, down=True)
        assert _status(settings).current == older
        assert _rows(settings) == _project(at_head, _rows(settings)), f"rows changed going down to {older}"
    _migrate(settings)
    again = _rows(settings)
    assert _project(again, at_head) == {
        name: [{**row, "due_date": None} if name == "todos" else row for row in rows] for name, rows in at_head.items()
    }, "rows changed coming back up (only the dropped due_date is lost)"

    _migrate(settings, "base", down=True)
    assert _rows(settings) == {}  # the base is an empty database
    assert _status(settings).verdict == "empty"
    _migrate(settings)
    assert _drift(settings) == []
    assert _rows(settings) == {name: [] for name in TABLES}


def test_a_migration_waiting_for_a_lock_fails_fast_and_changes_nothing(postgres_url: str) -> None:
    settings = _settings(postgres_url, migration_lock_timeout=0.5)
    _migrate(settings, "0001")
    blocker = _connect(settings)
    try:
        blocker.exec_driver_sql("SELECT * FROM todos")  # a reader in a long transaction
        # Without the timeout, ALTER TABLE would wait for the reader (here: for ever).
        with pytest.raises(sa.exc.OperationalError, match="canceling statement due to lock timeout"):
            _migrate(settings)
    finally:
        blocker.rollback()
        _close(blocker)
    assert _status(settings).current == "0001"
    _migrate(settings)
    assert _status(settings).verdict == "current"


# The FastAPI original's database


def _original_with_edge_rows(settings: Settings) -> None:
    """The original's demo database, plus rows its nullable columns allowed."""
    _load_original(settings)
    _execute(
        settings,
        "INSERT INTO users (email, hashed_password, lname, fname, created_at, updated_at)"
        " SELECT 'Carol@Example.COM', hashed_password, NULL, NULL, '2026-11-30 23:59:59.5', NULL"
        " FROM users WHERE id = 1",  # johndoe's hash: the password "secret"
        "INSERT INTO todos (text, completed, owner_id, created_at, updated_at)"
        " VALUES ('undecided', NULL, 3, '2026-11-30 23:59:59.75', NULL)",
    )


@pytest.mark.process
def test_the_originals_database_upgrades_in_place_with_its_data(database_url: str) -> None:
    settings = _settings(database_url)
    _original_with_edge_rows(settings)
    assert _status(settings).verdict == "behind"

    result = _asgi_todo("db", "upgrade", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert _drift(settings) == []
    carol_row = _rows(settings)["users"][2]
    assert carol_row["updated_at"] == carol_row["created_at"]  # a missing updated_at became created_at

    with TestClient(create_app(settings)) as client:
        # BCRYPT_ROUNDS=4 here; the stored $2b$12$ hashes still check, at their own cost.
        john, alice = login(client, *JOHN), login(client, *ALICE)
        carol = login(client, "carol@example.com", "secret")
        me = client.get("/api/auth/me", headers=john).json()
        assert (me["id"], me["email"], me["fname"], me["lname"]) == (1, JOHN[0], "John", "Doe")
        assert utc(me["created_at"]) == datetime(2026, 12, 1, 5, 46, 51, 123456, tzinfo=UTC)
        todos = {
            user: [(todo["id"], todo["text"], todo["completed"], todo["owner_id"]) for todo in listed]
            for user, headers in (("john", john), ("alice", alice), ("carol", carol))
            for listed in [client.get("/api/todos/", headers=headers).json()]
        }
        assert todos == {
            "john": [(1, "Bake french bread", False, 1), (2, "Water flower", False, 1)],
            "alice": [(3, "Play outdoor tennis", False, 2)],
            "carol": [(4, "undecided", False, 3)],
        }
        bread = client.get("/api/todos/1", headers=john).json()
        assert (
            utc(bread["created_at"]) == utc(bread["updated_at"]) == datetime(2026, 12, 1, 5, 46, 51, 690312, tzinfo=UTC)
        )
        carol_me = client.get("/api/auth/me", headers=carol).json()
        assert (carol_me["fname"], carol_me["lname"]) == ("", "")
        # Nobody became a superuser: the original stores no roles.
        assert not any(client.get("/api/auth/me", headers=h).json()["is_superuser"] for h in (john, alice, carol))
        assert client.get("/api/users/", headers=john).status_code == 403
        # New rows continue the old ids.
        created = client.post("/api/todos/", json={"text": "after the upgrade"}, headers=alice)
        assert created.json()["id"] == 5
        signup = client.post("/api/users/signup", json={"email": "dave@example.com", "password": "long enough"})
        assert signup.json()["id"] == 4

    promoted = _asgi_todo("users", "promote", "JohnDoe@Example.com", database_url=database_url)
    assert promoted.returncode == 0, promoted.stderr
    with TestClient(create_app(settings)) as client:
        john = login(client, *JOHN)
        assert client.get("/api/users/", headers=john).status_code == 200
    demoted = _asgi_todo("users", "demote", JOHN[0], database_url=database_url)
    assert demoted.returncode == 0, demoted.stderr
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/users/", headers=login(client, *JOHN)).status_code == 403


def test_the_originals_database_started_with_update_db_answers_logins(database_url: str) -> None:
    """Before migrations this started, answered /health, then every login 503 (`no such
    column: users.is_superuser`) (docs: Operations, Migrations: databases made before migrations)."""
    settings = make_settings(database_url, reset_db=False, update_db=True)
    _load_original(settings)
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/auth/token", data={"username": ALICE[0], "password": ALICE[1]})
        assert response.status_code == 200, response.text
        todos = client.get("/api/todos/", headers={"Authorization": f"Bearer {response.json()['access_token']}"})
        assert [todo["text"] for todo in todos.json()] == ["Play outdoor tennis"]


@pytest.mark.process
def test_promoting_an_unknown_email_says_so(sqlite_url: str) -> None:
    startup.prepare(make_settings(sqlite_url), start="demo")
    result = _asgi_todo("users", "promote", "nobody@example.com", database_url=sqlite_url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["asgi-todo: no user with the email 'nobody@example.com'"]


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        pytest.param("UPDATE todos SET owner_id = NULL WHERE id = 2", "todos without an owner (ids 2)", id="orphan"),
        pytest.param(
            "UPDATE users SET email = 'JohnDoe@Example.com' WHERE id = 2",
            "users whose emails differ only in case (ids 1, 2)",
            id="case-twins",
        ),
        pytest.param("UPDATE users SET email = NULL WHERE id = 1", "users without an email (ids 1)", id="no-email"),
    ],
)
def test_original_rows_that_do_not_fit_stop_the_upgrade_unchanged(
    database_url: str, statement: str, named: str
) -> None:
    settings = _settings(database_url)
    _load_original(settings)
    _execute(settings, statement)
    before = _rows(settings)
    with pytest.raises(migrate.MigrationError, match=named.replace("(", r"\(").replace(")", r"\)")):
        _migrate(settings)
    assert _rows(settings) == before
    assert _status(settings).current is None


# asgi_todo's own databases from before migrations (create_all)


def test_a_pre_alembic_asgi_todo_database_is_stamped_and_upgraded(database_url: str) -> None:
    settings = make_settings(database_url)
    startup.prepare(settings, start="old-release")
    _migrate(settings, "0001", down=True)
    # What create_all of the release before migrations left: no version table; and, from
    # a release before that, no app_state.
    _execute(settings, "DROP TABLE alembic_version", "DROP TABLE app_state")
    before = _rows(settings)
    assert _status(settings).verdict == "behind"

    _migrate(settings)
    assert _drift(settings) == []
    after = _rows(settings)
    assert _project(after, before) == before
    assert after["app_state"] == []


# Start-up


def test_update_db_upgrades_once_per_start_and_keeps_data(database_url: str) -> None:
    demo = make_settings(database_url)
    startup.prepare(demo, start="demo")
    _migrate(demo, "0001", down=True)
    _execute(demo, "DELETE FROM app_state")  # the demo reset was a start of its own, long ago
    before = {name: rows for name, rows in _rows(demo).items() if name != "app_state"}
    update = make_settings(database_url, reset_db=False, update_db=True)
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda start=start: outcomes.append(startup.prepare(update, start=start)))
        for start in ("host-a", "host-b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["skipped", "update"]  # two hosts starting together: one migrates
    assert _status(demo).verdict == "current"
    assert _project(_rows(demo), before) == before


@pytest.mark.process
@pytest.mark.parametrize(
    ("revision", "expected"),
    [
        pytest.param("0001", "behind this code's 0005; run `asgi-todo db upgrade`", id="behind"),
        pytest.param("9999", "newer than this code's 0005", id="ahead"),
    ],
)
def test_a_database_behind_or_ahead_refuses_to_start_with_one_line(
    database_url: str, revision: str, expected: str
) -> None:
    settings = make_settings(database_url)
    startup.prepare(settings, start="demo")
    if revision == "0001":
        _migrate(settings, "0001", down=True)
    else:
        _execute(settings, f"UPDATE alembic_version SET version_num = '{revision}'")  # noqa: S608 - a constant

    with (
        pytest.raises(ConfigError, match=expected.replace("(", r"\(")),
        TestClient(create_app(_settings(database_url))),
    ):
        pass
    # A port of its own: serve listens before it checks the database, and the other
    # database's run of this test may be listening at the same moment.
    served = _asgi_todo("serve", "--port", str(free_port()), database_url=database_url)
    assert served.returncode == 2
    lines = served.stderr.strip().splitlines()
    assert len(lines) == 1, served.stderr
    assert lines[0].startswith("asgi-todo: DATABASE_URL: the database is at revision ")
    assert expected in lines[0]

    check = _asgi_todo("db", "check", database_url=database_url)
    assert check.returncode == 1
    assert check.stderr.strip().splitlines() == [f"asgi-todo: {_status(settings).problem()}"]


def test_update_db_refuses_a_database_ahead_of_the_code(database_url: str) -> None:
    settings = make_settings(database_url)
    startup.prepare(settings, start="demo")
    _execute(settings, "UPDATE alembic_version SET version_num = '9999'", "DELETE FROM app_state")
    with pytest.raises(ConfigError, match="newer than this code's"):
        startup.prepare(make_settings(database_url, reset_db=False, update_db=True), start="rolled-back")
    assert _status(settings).current == "9999"


# The command line


@pytest.mark.process
def test_db_commands(database_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _asgi_todo("db", *args, database_url=database_url)

    first = run("current")
    if database_url.startswith("sqlite"):  # no file yet: named, and not created (docs: configuration)
        assert first.returncode == 2, first.stdout
        assert "there is no SQLite file" in first.stderr
    else:
        assert first.stdout.strip() == "base (empty; the code's revision is 0005)"
    assert run("upgrade", "0001").returncode == 0
    assert run("current").stdout.strip() == "0001 (behind; the code's revision is 0005)"
    assert run("update").returncode == 0
    assert run("current").stdout.strip() == "0005 (current; the code's revision is 0005)"
    check = run("check")
    assert (check.returncode, check.stderr.strip()) == (0, "asgi-todo: the database is at the code revision 0005")
    assert run("downgrade", "0001").returncode == 0
    assert _status(_settings(database_url)).current == "0001"
    assert run("reset", "--yes").returncode == 0
    assert _status(_settings(database_url)).verdict == "current"
    assert len(_rows(_settings(database_url))["users"]) == 2
    history = run("history").stdout.splitlines()
    assert history[:2] == [
        "0005: Idempotency keys: each POST's key, its caller, its request's fingerprint and its response. (head)",
        "0004: Todos get the indexes that a list's page walks in id order.",
    ]
    assert [line.split(":")[0] for line in history] == ["0005", "0004", "0003", "0002", "0001"]
    unknown = run("downgrade", "nonsense")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1] == "asgi-todo: Can't locate revision identified by 'nonsense'"


def test_db_revision_writes_the_next_numbered_file(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into a copy of the scripts, so the package's own stay untouched."""
    copy = tmp_path / "migrations"
    shutil.copytree(ROOT / "asgi_todo" / "migrations", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "SCRIPT_LOCATION", str(copy))
    migrate.scripts.cache_clear()
    try:
        settings = _settings(sqlite_url)
        _migrate(settings)
        _execute(settings, "ALTER TABLE todos ADD COLUMN priority INTEGER")  # the "model" is ahead
        connection = _connect(settings)
        try:
            path = Path(migrate.revision(connection, settings, message="drop priority", autogenerate=True))
        finally:
            _close(connection)
        assert path.name == "0006_drop_priority.py"
        text = path.read_text()
        assert "down_revision: str | None = '0005'" in text
        assert "drop_column('priority')" in text
    finally:
        migrate.scripts.cache_clear()


# The wheel


@pytest.mark.process
def test_the_wheel_carries_the_migrations(tmp_path: Path, sqlite_url: str) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("asgi_todo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "asgi_todo/migrations/env.py",
        "asgi_todo/migrations/script.py.mako",
        "asgi_todo/migrations/versions/0001_schema.py",
        "asgi_todo/migrations/versions/0002_todo_due_date.py",
        "asgi_todo/migrations/versions/0003_logins.py",
        "asgi_todo/migrations/versions/0004_todo_page_indexes.py",
        "asgi_todo/migrations/versions/0005_idempotency_keys.py",
    } <= names
    # Installed apart from the checkout, it migrates a database.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    env = server_env(sqlite_url, PYTHONPATH=str(target))
    where = subprocess.run(
        [sys.executable, "-c", "import asgi_todo; print(asgi_todo.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(target)), where.stdout
    upgraded = subprocess.run(
        [sys.executable, "-m", "asgi_todo", "db", "upgrade"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert _status(_settings(sqlite_url)).verdict == "current"


# A rolling deploy: the release before the due_date migration keeps serving through it


def _release_before(revision_file: str, into: Path) -> Path:
    """The package as it was in the commit before `revision_file` was added, from git."""
    require(shutil.which("git") is not None and (ROOT / ".git").exists(), "a git checkout with its history")
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", revision_file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    require(bool(added), f"the commit that added {revision_file} (a shallow clone lacks it)")
    archive = subprocess.run(
        ["git", "archive", f"{added[-1]}^", "asgi_todo"], cwd=ROOT, capture_output=True, check=True
    )
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    _asset_packages_of_then(into)
    return into


def _asset_packages_of_then(into: Path) -> None:
    """Releases before the vendored UI assets found Swagger UI in swagger-ui-bundle-v2 and
    ReDoc in drf-spectacular-sidecar, which are no longer installed: stand-ins beside the old
    package point it at the same files, vendored now (docs: Configuration, the vendored files)."""
    static = ROOT / "asgi_todo" / "static"
    (into / "swagger_ui_bundle").mkdir()
    (into / "swagger_ui_bundle" / "__init__.py").write_text(f"swagger_ui_path = {str(static / 'swagger-ui')!r}\n")
    bundles = into / "drf_spectacular_sidecar" / "static" / "drf_spectacular_sidecar" / "redoc" / "bundles"
    bundles.mkdir(parents=True)
    (into / "drf_spectacular_sidecar" / "__init__.py").write_text("")
    for name in ("redoc.standalone.js", "redoc.standalone.js.LICENSE.txt"):
        shutil.copyfile(static / "redoc" / name, bundles / name)


@pytest.mark.process
def test_the_previous_release_keeps_working_while_and_after_0002_runs(database_url: str, tmp_path: Path) -> None:
    old = _release_before("asgi_todo/migrations/versions/0002_todo_due_date.py", tmp_path / "previous")
    env = server_env(database_url)

    def old_code(*args: str) -> subprocess.CompletedProcess[str]:  # `-m` runs the package in its cwd
        return subprocess.run(
            [sys.executable, "-m", "asgi_todo", *args], env=env, cwd=old, capture_output=True, text=True
        )

    reset = old_code("db", "reset")
    assert reset.returncode == 0, reset.stderr
    port = free_port()
    server = start([sys.executable, "-m", "asgi_todo", "serve", "--port", str(port)], env, port=port, cwd=str(old))
    try:
        server.wait_healthy()
        base = server.url + "/api"
        token = httpx.post(base + "/auth/token", data={"username": ALICE[0], "password": ALICE[1]}).json()
        alice = {"Authorization": f"Bearer {token['access_token']}"}
        before = httpx.get(base + "/todos/", headers=alice).json()

        upgraded = _asgi_todo("db", "upgrade", "0002", database_url=database_url)  # the next release's migration
        assert upgraded.returncode == 0, upgraded.stderr
        assert _status(_settings(database_url)).current == "0002"

        # The old code's contract, on the migrated schema.
        assert httpx.get(base + "/todos/", headers=alice).json() == before
        created = httpx.post(base + "/todos/", json={"text": "from the old release"}, headers=alice)
        assert created.status_code == 201, created.text
        assert "due_date" not in created.json()
        todo = base + f"/todos/{created.json()['id']}"
        assert httpx.get(todo, headers=alice).json()["text"] == "from the old release"
        assert httpx.patch(todo, json={"completed": True}, headers=alice).json()["completed"] is True
        assert httpx.put(todo, json={"text": "renamed", "completed": False}, headers=alice).status_code == 200
        assert httpx.delete(todo, headers=alice).status_code == 204
        signup = httpx.post(base + "/users/signup", json={"email": "old@example.com", "password": "long enough"})
        assert signup.status_code == 201, signup.text

        # A todo the new release dated keeps its date through the old release's changes.
        settings = _settings(database_url)
        _execute(settings, "UPDATE todos SET due_date = '2026-12-24' WHERE id = 3")  # alice's, dated by it
        dated_url = base + "/todos/3"
        assert (
            httpx.put(dated_url, json={"text": "dated, renamed", "completed": True}, headers=alice).status_code == 200
        )
        assert httpx.patch(dated_url, json={"completed": False}, headers=alice).status_code == 200
        read = next(todo for todo in _rows(settings)["todos"] if todo["id"] == 3)
        assert (read["text"], str(read["due_date"])) == ("dated, renamed", "2026-12-24")
    finally:
        server.stop()
    assert "Traceback" not in server.output()

    if (old / "asgi_todo" / "migrations").exists():  # a rolled-back release refuses to start again
        again = old_code("serve", "--port", str(free_port()))
        assert again.returncode == 2
        assert "newer than this code's 0001" in again.stderr.strip().splitlines()[-1]


@pytest.mark.process
def test_users_promote_finds_the_user_by_the_canonical_email(database_url: str) -> None:
    """The same canonical form as sign-up (NFKC and case folding): a fullwidth capital A is Alice."""
    settings = make_settings(database_url)
    startup.prepare(settings, start="demo")
    promoted = _asgi_todo("users", "promote", "\uff21LICE@example.com", database_url=database_url)
    assert promoted.returncode == 0, promoted.stderr
    with TestClient(create_app(_settings(database_url))) as client:
        assert client.get("/api/users/", headers=login(client, *ALICE)).status_code == 200
    demoted = _asgi_todo("users", "demote", "\uff21lice@EXAMPLE.com", database_url=database_url)
    assert demoted.returncode == 0, demoted.stderr
    with TestClient(create_app(_settings(database_url))) as client:
        assert client.get("/api/users/", headers=login(client, *ALICE)).status_code == 403


@pytest.mark.process
def test_a_downgrade_that_drops_rows_needs_yes(database_url: str) -> None:
    """`db downgrade base` dropped every table holding the demo's 2 users and 4 todos without a
    word: a step that drops a table or a column holding rows now wants
    --yes, as `db reset` does; steps that drop nothing holding rows need none."""
    settings = _settings(database_url)
    startup.prepare(make_settings(database_url), start="demo")
    before = _rows(settings)

    refused = _asgi_todo("db", "downgrade", "base", database_url=database_url)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "asgi-todo: downgrading to base drops what holds rows (todos: 4, users: 2);"
        " `asgi-todo db downgrade base --yes` drops them"
    ]
    assert _status(settings).current == migrate.head()
    assert _rows(settings) == before

    _execute(settings, "UPDATE todos SET due_date = '2026-12-24' WHERE id = 1")
    due = _asgi_todo("db", "downgrade", "0001", database_url=database_url)
    assert due.returncode == 1
    assert "(todos.due_date: 1)" in due.stderr
    assert _status(settings).current == migrate.head()
    # Indexes only, and the sessions' tables while they are empty: no --yes needed.
    assert _asgi_todo("db", "downgrade", "0002", database_url=database_url).returncode == 0
    assert _status(settings).current == "0002"

    dropped = _asgi_todo("db", "downgrade", "base", "--yes", database_url=database_url)
    assert dropped.returncode == 0, dropped.stderr
    assert _status(settings).verdict == "empty"


@pytest.mark.process
def test_an_empty_database_downgrades_without_yes(database_url: str) -> None:
    assert _asgi_todo("db", "upgrade", database_url=database_url).returncode == 0
    result = _asgi_todo("db", "downgrade", "base", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert _status(_settings(database_url)).verdict == "empty"


@pytest.mark.process
def test_an_upgrade_to_a_revision_below_the_database_is_refused(database_url: str) -> None:
    """`db upgrade 0002` on a database at a later revision is refused, not a silent no-op
    (docs: Operations, Migrations: downgrades that drop rows)."""
    assert _asgi_todo("db", "upgrade", database_url=database_url).returncode == 0
    result = _asgi_todo("db", "upgrade", "0002", database_url=database_url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"asgi-todo: the database is at revision {migrate.head()}, above 0002: an upgrade never goes down;"
        " `asgi-todo db downgrade 0002` does"
    ]
    assert _status(_settings(database_url)).current == migrate.head()
    already = _asgi_todo("db", "upgrade", migrate.head(), database_url=database_url)
    assert already.returncode == 0  # already there: a no-op
