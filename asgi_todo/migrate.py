"""Alembic from the package: where a database stands against the code, and the commands.

The revisions live in `asgi_todo/migrations/versions` and ship in the wheel, so an installed
service migrates without a checkout. Callers hold the start-up locks and pass their
connection, idle (not in a transaction): each revision then runs in its own transaction.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Column, Connection, MetaData, String, Table, column, func, inspect, select, table

from .models import AppState, Base
from .settings import Settings

SCRIPT_LOCATION = "asgi_todo:migrations"
VERSION_TABLE = "alembic_version"
_VERSION = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32)))
UPGRADE_HINT = "run `asgi-todo db upgrade` (or start once with UPDATE_DB=1)"


class MigrationError(Exception):
    """A migration cannot run or failed; the message is one line."""


def config(settings: Settings | None = None, connection: Connection | None = None) -> Config:
    """Alembic's configuration, without an ini file: the packaged scripts and, when given, our
    settings and the connection to run on."""
    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if settings is not None:
        cfg.attributes["settings"] = settings
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The code's revision."""
    revision = scripts().get_current_head()
    assert revision is not None
    return revision


@dataclass(frozen=True)
class Status:
    """Where a database stands: its revision (None: no version table, or an empty one),
    whether it has tables at all, and which of the code's tables it lacks."""

    current: str | None
    head: str
    has_tables: bool
    missing: frozenset[str] = frozenset()

    @property
    def verdict(self) -> str:
        """One of current, empty, behind, ahead."""
        if self.current == self.head:
            return "current"
        if self.current is None:
            return "behind" if self.has_tables else "empty"
        return "behind" if _known(self.current) else "ahead"

    def problem(self) -> str | None:
        """None when the code can serve this database, else one line saying why not."""
        verdict = self.verdict
        if verdict == "current":
            return None
        if verdict == "empty":
            return (
                "the database has no tables; start once with UPDATE_DB=1 (or RESET_DB=1 for demo data),"
                " or run `asgi-todo db upgrade`"
            )
        if verdict == "behind":
            where = self.current or "none (made before migrations)"
            return f"the database is at revision {where}, behind this code's {self.head}; {UPGRADE_HINT}"
        return (
            f"the database is at revision {self.current}, newer than this code's {self.head}"
            f" (was the app rolled back?); deploy the newer code, or first run"
            f" `asgi-todo db downgrade {self.head}` with it"
        )


def _known(revision: str) -> bool:
    try:
        return scripts().get_revision(revision) is not None
    except CommandError:
        return False


def status(connection: Connection) -> Status:
    """Reads only (the version table itself, quietly). A transaction it opens, it ends; a
    caller's (PostgreSQL: the one holding the start-up advisory lock) stays open."""
    opened = not connection.in_transaction()
    try:
        names = set(inspect(connection).get_table_names())
        current = None
        if VERSION_TABLE in names:
            current = connection.execute(select(_VERSION.c.version_num)).scalar()
    finally:
        if opened:
            connection.rollback()
    ours = {table.name for table in Base.metadata.sorted_tables}
    return Status(current=current, head=head(), has_tables=bool(names & ours), missing=frozenset(ours - names))


def upgrade(connection: Connection, settings: Settings, revision: str = "head") -> None:
    """Upgrade to `revision`. A database ahead of the code is refused, not touched, and so
    is a revision below the database's (Alembic would do nothing and say nothing)."""
    where = status(connection)
    if where.verdict == "ahead":
        raise MigrationError(str(where.problem()))
    if _steps_down(where.current, revision):
        raise MigrationError(
            f"the database is at revision {where.current}, above {revision}: an upgrade never goes down;"
            f" `asgi-todo db downgrade {revision}` does"
        )
    _run(command.upgrade, connection, settings, revision)


def downgrade(connection: Connection, settings: Settings, revision: str, *, drop_rows: bool = False) -> None:
    """Downgrade to `revision`; unless `drop_rows`, refused when a step drops a table or a
    column that holds rows (as `db reset` wants --yes)."""
    if not drop_rows:
        dropped = dropped_rows(connection, revision)
        if dropped:
            held = ", ".join(f"{name}: {count}" for name, count in dropped.items())
            raise MigrationError(
                f"downgrading to {revision} drops what holds rows ({held});"
                f" `asgi-todo db downgrade {revision} --yes` drops them"
            )
    _run(command.downgrade, connection, settings, revision)


def dropped_rows(connection: Connection, revision: str) -> dict[str, int]:
    """What a downgrade to `revision` would drop that holds rows: rows by table, non-null
    values by "table.column", as each revision's `DROPS` names them. A revision that does
    not say is taken to drop every table of ours. The bookkeeping table is left out, as
    `db reset` leaves it out."""
    opened = not connection.in_transaction()
    try:
        present = set(inspect(connection).get_table_names())
        ours = tuple(reversed(Base.metadata.tables))
        counts: dict[str, int] = {}
        for script in _steps_down(status(connection).current, revision):
            for name in getattr(script.module, "DROPS", ours):
                table_name = name.partition(".")[0]
                if name in counts or table_name not in present or table_name == AppState.__tablename__:
                    continue
                count = _count(connection, name)
                if count:
                    counts[name] = count
        return counts
    finally:
        if opened:
            connection.rollback()


def _count(connection: Connection, name: str) -> int:
    table_name, _, column_name = name.partition(".")
    if not column_name:
        return connection.scalar(select(func.count()).select_from(table(table_name))) or 0
    if column_name not in {found["name"] for found in inspect(connection).get_columns(table_name)}:
        return 0
    values = table(table_name, column(column_name))
    return connection.scalar(select(func.count()).select_from(values).where(values.c[column_name].is_not(None))) or 0


def _steps_down(current: str | None, revision: str) -> list[Script]:
    """The revisions that going from `current` to `revision` undoes, newest first; none
    when `revision` is not below `current`."""
    if current is None or revision == "head":
        return []
    try:
        return list(scripts().iterate_revisions(current, revision))
    except (RevisionError, CommandError):
        return []  # not below, or unknown: Alembic itself says so, in one line


def _run(action: Callable[[Config, str], None], connection: Connection, settings: Settings, revision: str) -> None:
    if connection.in_transaction() and connection.dialect.name == "sqlite":
        raise ValueError("SQLite migrations need an idle connection: commit or roll back first")
    try:
        action(config(settings, connection), revision)
    except CommandError as exc:
        raise MigrationError(str(exc).splitlines()[0]) from None


def revision(connection: Connection, settings: Settings, *, message: str, autogenerate: bool) -> str:
    """Write the next revision file, numbered after head, beside the others; its path."""
    number = f"{int(head()) + 1:04d}" if head().isdigit() else None
    if autogenerate and status(connection).verdict != "current":
        raise MigrationError(f"autogenerate compares with a database at head: {UPGRADE_HINT}")
    script = command.revision(config(settings, connection), message=message, autogenerate=autogenerate, rev_id=number)
    assert isinstance(script, Script)
    scripts.cache_clear()
    return str(script.path)


def create_at_head(connection: Connection) -> None:
    """A fresh database's schema straight from the models, stamped at head: what the
    revisions build, in one step (the drift test proves the two equal)."""
    Base.metadata.create_all(connection)
    MigrationContext.configure(connection).stamp(scripts(), "head")


def drop_all(connection: Connection) -> None:
    """Our tables and the version table; nothing else in the database."""
    Base.metadata.drop_all(connection)
    _VERSION.drop(connection, checkfirst=True)


def configure_connection(connection: Connection, settings: Settings) -> bool:
    """Before the revisions run; True when they run in the caller's transaction (PostgreSQL
    under the start-up advisory lock, which lives as long as that transaction).

    SQLite: foreign keys off, because rebuilding a table (its way to alter one) drops the old
    copy, which would cascade or fail; the pragma only takes effect outside a transaction.
    PostgreSQL: a lock timeout for every statement."""
    if connection.dialect.name == "sqlite":
        _sqlite_pragma(connection, "PRAGMA foreign_keys=OFF")
        return False
    milliseconds = max(1, round(settings.migration_lock_timeout * 1000))
    if connection.in_transaction():
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")
        return True
    connection.exec_driver_sql(f"SET lock_timeout = {milliseconds}")
    connection.commit()  # a session setting; the revisions' own transactions follow
    return False


def restore_connection(connection: Connection, *, external: bool) -> None:
    if external:  # SET LOCAL ends with the caller's transaction, committed or rolled back
        return
    if connection.in_transaction():
        connection.rollback()
    if connection.dialect.name != "sqlite":
        connection.exec_driver_sql("RESET lock_timeout")
        connection.commit()
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    connection.rollback()
    _sqlite_pragma(connection, "PRAGMA foreign_keys=ON")
    if broken:
        raise MigrationError(f"the migration left {len(broken)} rows whose foreign key points nowhere")


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(pragma)
