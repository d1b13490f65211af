"""`asgi-todo db backup PATH` and `db restore PATH` (docs/backups.md).

A backup is a consistent copy taken while the service runs: SQLite's online backup API copies
the database in one step under a read lock, so writers in WAL mode go on and the copy is the
database as of one commit; on PostgreSQL, `pg_dump --format=custom` reads everything in one
snapshot (a repeatable-read transaction). A restore checks the backup's Alembic revision
against the code's, and refuses a database that holds rows unless told `--yes`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

from sqlalchemy.engine import make_url

from . import migrate, startup
from .settings import ConfigError, Settings

_PG_SOURCE = "PostgreSQL client tools (Debian: postgresql-client)"


class BackupError(Exception):
    """A backup or restore that cannot go ahead; the message is one line."""


def backup(settings: Settings, path: Path) -> str:
    """Write a copy of the database to `path` (replaced at once when it is complete); the
    copy's revision."""
    path = path.resolve()
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent} is not a directory")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    try:
        if settings.is_sqlite:
            _sqlite_copy(_sqlite_file(settings), Path(temporary))
        else:
            _run(_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={temporary}", settings=settings)
        revision = backup_revision(Path(temporary), sqlite=settings.is_sqlite)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return revision or "base"


def restore(settings: Settings, path: Path, *, replace: bool) -> tuple[str, str]:
    """Put the backup at `path` in place of the database; its revision and what it replaced."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    revision = backup_revision(path, sqlite=settings.is_sqlite)
    known = {script.revision for script in migrate.scripts().walk_revisions()}
    if revision is None:
        raise BackupError(f"{path}: not a backup of this service's database (no Alembic revision in it)")
    if revision not in known:
        raise BackupError(
            f"{path}: the backup is at revision {revision}, newer than this code's {migrate.head()};"
            " restore it with the release that wrote it"
        )
    held = startup.stored_rows(settings)
    if sum(held.values()) and not replace:
        raise ConfigError(
            f"DATABASE_URL: the database holds {startup.describe_rows(held)}; `db restore --yes` replaces them"
        )
    if settings.is_sqlite:
        _sqlite_copy(path, _sqlite_file(settings))
    else:
        _pg_restore(settings, path)
    return revision, startup.describe_rows(held)


def backup_revision(path: Path, *, sqlite: bool) -> str | None:
    """The Alembic revision a backup holds, or None."""
    if sqlite:
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
                row = connection.execute(f"SELECT version_num FROM {migrate.VERSION_TABLE}").fetchone()  # noqa: S608
        except sqlite3.DatabaseError:
            return None
        return None if row is None else str(row[0])
    listing = subprocess.run(
        [_tool("pg_restore"), "--data-only", f"--table={migrate.VERSION_TABLE}", "--file=-", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if listing.returncode != 0:
        return None
    lines = listing.stdout.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("COPY ") and number + 1 < len(lines) and lines[number + 1] != "\\.":
            return lines[number + 1].strip()
    return None


def _sqlite_file(settings: Settings) -> Path:
    database = make_url(settings.database_url).database
    assert database  # settings refuse an SQLite URL without a file
    return Path(database)


def _sqlite_copy(source: Path, target: Path) -> None:
    """SQLite's online backup API: all pages in one step, so the copy is one commit's state."""
    with (
        closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as reader,
        closing(sqlite3.connect(target)) as writer,
    ):
        reader.backup(writer)


def _pg_restore(settings: Settings, path: Path) -> None:
    """One transaction (psql --single-transaction): our tables dropped, the backup's created and
    filled. A failure anywhere leaves the database as it was. pg_restore's own --clean would
    leave a table the backup does not have (one a later revision added)."""
    from .models import Base

    listing = subprocess.run(
        [_tool("pg_restore"), "--no-owner", "--no-privileges", "--file=-", str(path)],
        capture_output=True,
        check=False,
    )
    if listing.returncode != 0:
        raise BackupError(
            f"pg_restore failed: {_last_line(listing.stderr.decode(errors='replace'), listing.returncode)}"
        )
    names = [*(table.name for table in reversed(Base.metadata.sorted_tables)), migrate.VERSION_TABLE]
    drops = "".join(f'DROP TABLE IF EXISTS public."{name}" CASCADE;\n' for name in names).encode()
    psql = _tool("psql")
    _run(
        psql,
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        "--file=-",
        settings=settings,
        stdin=drops + listing.stdout,
    )


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found on PATH: install the {_PG_SOURCE} of the server's major version or newer")
    return found


def _run(tool: str, *args: str, settings: Settings, stdin: bytes | None = None) -> None:
    """A PostgreSQL client tool against DATABASE_URL; the password by environment, never argv."""
    url = make_url(settings.database_url)
    env = {**os.environ}
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    target = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    done = subprocess.run([tool, f"--dbname={target}", *args], env=env, input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise BackupError(
            f"{Path(tool).name} failed: {_last_line(done.stderr.decode(errors='replace'), done.returncode)}"
        )


def _last_line(stderr: str, status: int) -> str:
    return (stderr.strip().splitlines() or [f"exit status {status}"])[-1]
