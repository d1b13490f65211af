"""Start-up work, once per start whatever the number of processes: RESET_DB / UPDATE_DB
under a host-wide file lock and a PostgreSQL advisory lock, the demo data, the schema check,
and the generated signing key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from sqlalchemy import Connection, func, insert, inspect, make_url, select, update

from . import migrate, security
from .db import UNAVAILABLE, Database, make_engine
from .models import AppState, Base, Todo, User, utcnow
from .settings import ConfigError, Settings

# Start-up work is database work: its lines keep the logger name operators filter on.
logger = logging.getLogger("asgi_todo.db")

START_ID_ENV = "ASGI_TODO_START_ID"
# Processes that start within this many seconds of a reset or update count as the same start.
START_WINDOW_SECONDS = 60
_ADVISORY_KEY = zlib.crc32(b"asgi_todo.prepare")
_MARK_KEY = "startup"
_KEY_KEY = "jwt_key"

DEMO_USERS = (
    ("johndoe@example.com", "secret", "John", "Doe", True, ("Buy milk", "Write the weekly report")),
    ("alice@example.com", "secret2", "Alice", "Liddell", False, ("Read a book", "Water the plants")),
)


def start_id() -> str:
    """Who this start is: set by our launchers for their workers, else this process."""
    given = os.environ.get(START_ID_ENV)
    if given:
        return given
    import multiprocessing

    parent = multiprocessing.parent_process()  # uvicorn --workers spawns its workers
    pid = parent.pid if parent is not None and parent.pid is not None else os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_started(pid)}"


def _process_started(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def lock_path(settings: Settings) -> Path:
    database = _sqlite_file(settings)
    if database is not None:
        return database.with_name(database.name + ".lock")
    digest = hashlib.sha256(settings.database_url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"asgi_todo-{digest}.lock"


def _sqlite_file(settings: Settings) -> Path | None:
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    assert database  # settings refuse a SQLite URL without a file
    return Path(database).resolve()


@contextmanager
def startup_lock(settings: Settings, connection: Connection) -> Iterator[None]:
    """Host-wide file lock, plus a PostgreSQL advisory lock for every host at once.

    The advisory lock belongs to the connection's transaction, which the caller ends: the
    work under it commits or rolls back in that one transaction, and the lock goes with it.
    A session-level lock would break behind a pooler in transaction mode (PgBouncer): taken
    on one server connection, released on another, and held by the first one forever
    (test_cluster.py, the PgBouncer case).
    """
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=300):
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_ADVISORY_KEY)))
        yield


def prepare(settings: Settings, *, start: str, force: bool = False) -> str:
    """Apply RESET_DB or UPDATE_DB once for this start, whatever the number of processes.

    Returns what was done: "reset", "update", "skipped" or "nothing".
    """
    action = "reset" if settings.reset_db else "update" if settings.update_db else None
    if action is None:
        return "nothing"
    engine = make_engine(settings, pool_size=1)
    try:
        # One transaction from the lock to the commit; SQLite takes its write lock at its start.
        connection = engine.connect().execution_options(sqlite_immediate=True)
        with connection, startup_lock(settings, connection):
            if not force and _done_for_this_start(connection, action=action, start=start):
                logger.info("%s_DB: already done for this start, skipped", action.upper())
                return "skipped"
            if action == "reset":
                logger.info("RESET_DB: dropping every table, with %s", describe_rows(_count_rows(connection)))
                migrate.drop_all(connection)
                migrate.create_at_head(connection)
                _load_demo(connection, rounds=settings.bcrypt_rounds)
                # Every token issued before a reset must be useless after it, though ids start
                # again: their logins are gone, and a generated key goes too (PostgreSQL's row
                # was just dropped; SQLite's file is removed, under the same lock its readers take).
                key_file = _key_file(settings)
                if key_file is not None:
                    key_file.unlink(missing_ok=True)
            else:
                if connection.dialect.name == "sqlite":
                    # Its migrations run in their own transactions (foreign keys off between
                    # them); the file lock alone keeps other processes out.
                    connection.rollback()
                try:
                    migrate.upgrade(connection, settings)
                except migrate.MigrationError as exc:
                    raise ConfigError(f"DATABASE_URL: {exc}") from None
            _write_state(connection, _MARK_KEY, json.dumps({"start": start, "action": action, "at": time.time()}))
            connection.commit()
            logger.info("%s_DB: done", action.upper())
            return action
    finally:
        engine.dispose()


def stored_rows(settings: Settings) -> dict[str, int]:
    """The rows a reset would drop, per table; the bookkeeping table (app_state) left out."""
    engine = make_engine(settings, pool_size=1)
    try:
        with engine.connect() as connection:
            return _count_rows(connection)
    finally:
        engine.dispose()


def _count_rows(connection: Connection) -> dict[str, int]:
    present = set(inspect(connection).get_table_names())
    return {
        table.name: connection.scalar(select(func.count()).select_from(table)) or 0
        for table in Base.metadata.sorted_tables
        if table.name in present and table.name != AppState.__tablename__
    }


def describe_rows(counts: dict[str, int]) -> str:
    """`6 rows (users: 2, todos: 4)`, or `no rows`."""
    total = sum(counts.values())
    if not total:
        return "no rows"
    return f"{total} rows ({', '.join(f'{name}: {count}' for name, count in counts.items() if count)})"


def _done_for_this_start(connection: Connection, *, action: str, start: str) -> bool:
    if not inspect(connection).has_table(AppState.__tablename__):
        return False
    raw = connection.scalar(select(AppState.value).where(AppState.key == _MARK_KEY))
    if raw is None:
        return False
    mark = json.loads(raw)
    if mark.get("start") == start:
        return True
    recent = time.time() - float(mark.get("at", 0)) < START_WINDOW_SECONDS
    return recent and (mark.get("action") == action or mark.get("action") == "reset")


def _write_state(connection: Connection, key: str, value: str) -> None:
    row = connection.execute(select(AppState).where(AppState.key == key)).first()
    if row is None:
        connection.execute(insert(AppState).values(key=key, value=value, updated_at=utcnow()))
    else:
        connection.execute(update(AppState).where(AppState.key == key).values(value=value, updated_at=utcnow()))


def _load_demo(connection: Connection, *, rounds: int) -> None:
    now = utcnow()
    for email, password, fname, lname, superuser, todos in DEMO_USERS:
        user_id = connection.scalar(
            insert(User)
            .values(
                email=email,
                hashed_password=security.hash_password(password, rounds=rounds),
                fname=fname,
                lname=lname,
                is_superuser=superuser,
                created_at=now,
                updated_at=now,
            )
            .returning(User.id)
        )
        connection.execute(
            insert(Todo),
            [
                {"text": text_, "completed": index == 1, "owner_id": user_id, "created_at": now, "updated_at": now}
                for index, text_ in enumerate(todos)
            ],
        )


def prepare_launch(settings: Settings, *, launcher: str) -> str:
    """For a launcher (the CLI, the gunicorn master), before it starts any server process:
    RESET_DB / UPDATE_DB once, then the schema check.

    The processes it starts inherit this start's id, RESET_DB=0 / UPDATE_DB=0 and the
    signing key, and so do the ones a supervisor starts later to replace dead ones: whatever
    a `.env` file says, for them this start's reset is done, and a generated key needs no
    database. A database that cannot be used, reachable or not, is a ConfigError: the launcher
    stops with one line (docs: Configuration, "At start-up"), whether SECRET_KEY is set or not.
    Returns what `prepare` did.
    """
    start = f"{launcher}-{uuid.uuid4().hex}"
    try:
        action = prepare(settings, start=start)
        database = Database(settings)
        try:
            # An unreachable database raises here: check_schema lets a worker start without one,
            # and a set SECRET_KEY or SQLite's key file never asks it.
            with database.engine.connect():
                pass
            check_schema(database)
            key = secret_key(settings, database)
        finally:
            database.close()
    except UNAVAILABLE as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ConfigError(f"DATABASE_URL: cannot use the database: {reason}") from None
    os.environ[START_ID_ENV] = start
    os.environ["RESET_DB"] = os.environ["UPDATE_DB"] = "0"
    os.environ["SECRET_KEY"] = key
    return action


def check_schema(database: Database) -> None:
    """Refuse to serve a database that is not at the code's revision, with one clear line:
    behind, its requests would fail; ahead (an app rolled back), they might write rows
    the newer schema does not expect."""
    try:
        with database.engine.connect() as connection:
            problem = schema_problem(connection)
    except UNAVAILABLE:
        logger.warning("database unreachable at start-up; serving 503 until it is back")
        return
    if problem is not None:
        raise ConfigError(f"DATABASE_URL: {problem}")


def schema_problem(connection: Connection) -> str | None:
    """Why this database does not hold the schema this code needs, in words, or None.

    The one schema check: start-up refuses such a database, and `GET /readyz` reports it:
    not at the code's revision, or a table of it gone behind the migrations' back.
    """
    status = migrate.status(connection)  # one look at the tables serves both questions
    problem = status.problem()
    if problem is not None:
        return problem
    if status.missing:
        return f"the database has no table {', '.join(sorted(status.missing))}"
    return None


def secret_key(settings: Settings, database: Database) -> str:
    """SECRET_KEY, or a generated key every worker and host of this database shares.

    SQLite keeps it in a 0600 file beside the database; PostgreSQL in the database itself,
    so that every host reads the same one.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    key_file = _key_file(settings)
    if key_file is not None:
        return _file_key(key_file, lock_path(settings))
    with database.engine.connect() as connection:
        from sqlalchemy.dialects.postgresql import insert

        connection.execute(
            insert(AppState)
            .values(key=_KEY_KEY, value=security.new_secret_key(), updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=[AppState.key])
        )
        key = connection.scalar(select(AppState.value).where(AppState.key == _KEY_KEY))
        connection.commit()
    assert key is not None
    return key


def _key_file(settings: Settings) -> Path | None:
    """Where a generated key lives on SQLite: beside the database."""
    database_file = _sqlite_file(settings)
    return None if database_file is None else database_file.with_name(database_file.name + ".secret")


def _file_key(path: Path, lock: Path) -> str:
    with FileLock(str(lock), timeout=300):
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(security.new_secret_key())
        return path.read_text().strip()
