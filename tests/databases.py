"""Prepared databases: the schema and the demo data are made once per test session (per
xdist worker), and every test gets a database in exactly that state.

SQLite: each test gets its own copy of the prepared file.

PostgreSQL: each test gets a database made with `CREATE DATABASE ... TEMPLATE` from the
prepared one, and when the test is over that database is put back to the prepared state in
place (its tables emptied and refilled with the template's rows, its sequences set back) for
the next test, instead of being dropped. Measured on the 2-core test machine: a copy costs
about 60 ms and a drop 100 ms to over a second, since every DROP DATABASE forces a checkpoint
that writes out the pages of every database copied since the last one. Putting the rows back
is one script in one round trip on a connection each copy keeps (a new connection is a new
server process), 4 to 6 ms under load, most of it telling whether the shape changed. A test
that changed the schema (a migration, a dropped table) leaves a database whose shape differs from
the template's: that one is dropped and the next test gets a new copy. Whatever a test did,
the next one starts from the prepared state and sees no row of another test's
(tests/test_databases.py). Every database is dropped at the end of the session.

The copies commit without waiting for their WAL to reach the disk (`synchronous_commit =
off`): what a commit makes visible, and when, is the same; only a crash of the server could
lose the last commits, and no test crashes it.
"""

from __future__ import annotations

import graphlib
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from asgi_todo import startup
from asgi_todo.models import AppState

from .helpers import make_settings

# The start-up mark says when RESET_DB last ran: a test that resets its copy within a minute
# of the template's reset would otherwise find it "already done for this start".
_FORGET_START = sa.delete(AppState).where(AppState.key == "startup")


def prepare(url: str) -> None:
    """The schema at head and the demo data, as RESET_DB leaves them."""
    startup.prepare(make_settings(url), start=f"template-{uuid.uuid4().hex}")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(_FORGET_START)
    finally:
        engine.dispose()


@dataclass
class PreparedSqlite:
    template: Path

    @classmethod
    def build(cls, folder: Path) -> PreparedSqlite:
        template = folder / "template.db"
        prepare(f"sqlite:///{template}")
        engine = sa.create_engine(f"sqlite:///{template}", poolclass=sa.NullPool)
        try:
            with engine.connect() as connection:  # one file: the WAL folded back in
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
        finally:
            engine.dispose()
        return cls(template)

    def copy(self, folder: Path) -> str:
        target = folder / "todo.db"
        shutil.copyfile(self.template, target)
        return f"sqlite:///{target}"


# The shape of a database, to tell whether a test changed it: its relations, their columns,
# defaults, indexes, constraints and triggers, its sequences, functions and types, read from
# the catalogs as stored (object ids included, so a table dropped and made again differs too),
# without the deparsing functions and information_schema views, which made this one check
# cost more than the rest of the restore. What VACUUM and ANALYZE change is left out.
_SHAPE = """
WITH ours AS (
  SELECT oid, relname, relkind, relnatts, relpersistence, relfilenode, reloptions
    FROM pg_class WHERE relnamespace = 'public'::regnamespace
)
SELECT md5(concat_ws('|',
  (SELECT string_agg(ours::text, ',' ORDER BY oid) FROM ours),
  (SELECT string_agg(concat_ws(':', attrelid, attnum, attname, atttypid, atttypmod, attnotnull, attisdropped,
                               attidentity, attgenerated, atthasdef, attcollation), ',' ORDER BY attrelid, attnum)
     FROM pg_attribute WHERE attrelid IN (SELECT oid FROM ours) AND attnum > 0),
  (SELECT string_agg(concat_ws(':', adrelid, adnum, adbin), ',' ORDER BY adrelid, adnum)
     FROM pg_attrdef WHERE adrelid IN (SELECT oid FROM ours)),
  (SELECT string_agg(concat_ws(':', indexrelid, indrelid, indkey, indclass, indisunique, indexprs, indpred), ','
                     ORDER BY indexrelid)
     FROM pg_index WHERE indrelid IN (SELECT oid FROM ours)),
  (SELECT string_agg(concat_ws(':', oid, conname, contype, conrelid, conkey, confrelid, confkey, confupdtype,
                               confdeltype, conbin, convalidated, condeferrable), ',' ORDER BY oid)
     FROM pg_constraint WHERE connamespace = 'public'::regnamespace),
  (SELECT string_agg(pg_sequence::text, ',' ORDER BY seqrelid)
     FROM pg_sequence WHERE seqrelid IN (SELECT oid FROM ours)),
  (SELECT string_agg(concat_ws(':', oid, tgname, tgrelid, tgenabled), ',' ORDER BY oid)
     FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM ours)),
  (SELECT string_agg(concat_ws(':', oid, proname), ',' ORDER BY oid)
     FROM pg_proc WHERE pronamespace = 'public'::regnamespace),
  (SELECT string_agg(concat_ws(':', oid, typname), ',' ORDER BY oid)
     FROM pg_type WHERE typnamespace = 'public'::regnamespace)
))
"""


def _restore_script(connection: psycopg.Connection[Any]) -> str:
    """The SQL that puts a copy of this database (the template) back in its state, as one
    script sent in one round trip: whatever the test left connected is ended; a copy whose
    shape differs is refused (an error, the transaction rolled back); then every table's rows
    are replaced by the template's, and every sequence is set back."""
    shape = connection.execute(_SHAPE).fetchone()
    assert shape is not None
    order: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for (table,) in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
        order.add(table)
    for child, parent in connection.execute(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
        " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
    ):
        order.add(child, parent)
    tables = list(order.static_order())  # parents before children
    # Each table's rows as PostgreSQL writes them in JSON, read back by json_populate_recordset:
    # every type round-trips exactly (timestamps to the microsecond, bytes, nulls).
    rows = {
        table: connection.execute(
            sql.SQL("SELECT json_agg(t)::text FROM {} AS t").format(sql.Identifier(table))
        ).fetchone()
        for table in tables
    }
    sequences = connection.execute("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")
    statements = [
        sql.SQL("BEGIN"),
        sql.SQL("SET LOCAL lock_timeout = '5s'"),  # a terminated session may hold its locks a moment longer
        sql.SQL("SET LOCAL synchronous_commit = off"),  # a test database: no flush to wait for
        sql.SQL(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ),
        sql.SQL(
            "DO $restore$ BEGIN IF ({shape}) IS DISTINCT FROM {expected} THEN"
            " RAISE EXCEPTION 'the shape of this database changed'; END IF; END $restore$"
        ).format(shape=sql.SQL(_SHAPE.strip()), expected=sql.Literal(shape[0])),
    ]
    statements += [sql.SQL("DELETE FROM {}").format(sql.Identifier(table)) for table in reversed(tables)]
    statements += [
        sql.SQL("INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, {rows})").format(
            table=sql.Identifier(table), rows=sql.Literal(found[0])
        )
        for table, found in rows.items()
        if found is not None and found[0] is not None
    ]
    statements += [  # a sequence never used yet has no last value: its next is 1
        sql.SQL("SELECT setval({name}, {value}, {called})").format(
            name=sql.Literal(f'public."{name}"'),
            value=sql.Literal(1 if value is None else value),
            called=sql.Literal(value is not None),
        )
        for name, value in sequences
    ]
    statements.append(sql.SQL("COMMIT"))
    return sql.SQL(";\n").join(statements).as_string(connection)


@dataclass
class PreparedPostgres:
    """The template and the databases copied from it that wait for their next test.

    Each copy keeps one connection of its own, idle between restores: a new connection is a
    new server process, which cost a restore more than all of its SQL."""

    admin: sa.Engine
    prefix: str
    template: str
    restore: str  # _restore_script's
    _free: list[str] = field(default_factory=list)
    _made: dict[str, psycopg.Connection[Any] | None] = field(default_factory=dict)  # each copy: its connection

    @classmethod
    def build(cls, admin: sa.Engine) -> PreparedPostgres:
        prefix = f"asgi_todo_test_{uuid.uuid4().hex[:8]}"
        template = f"{prefix}_template"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{template}"')
        prepare(_url(admin, template))
        with _connect(admin, template) as connection:
            restore = _restore_script(connection)
        return cls(admin, prefix, template, restore)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A database in the prepared state, for one test."""
        name = self._free.pop() if self._free else self._copy()
        yield _url(self.admin, name)
        if self._restore(name):
            self._free.append(name)
        else:
            self._drop(name)

    def close(self) -> None:
        for name in [*self._made, self.template]:
            self._drop(name)

    def _copy(self) -> str:
        name = f"{self.prefix}_{len(self._made)}_{uuid.uuid4().hex[:6]}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        self._made[name] = None
        return name

    def _restore(self, name: str) -> bool:
        """Put a used database back to the prepared state; False when that failed (its shape
        changed, or the test ended our connection too)."""
        connection = self._made[name]
        try:
            if connection is None:
                connection = self._made[name] = _connect(self.admin, name)
            connection.execute(self.restore)
            return True
        except psycopg.Error:
            return False

    def _drop(self, name: str) -> None:
        connection = self._made.pop(name, None)
        if connection is not None:
            connection.close()
        with self.admin.connect() as connection_:
            connection_.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _connect(admin: sa.Engine, name: str) -> psycopg.Connection[Any]:
    """A connection of the tests' own to one database, outside SQLAlchemy: the restore is a
    script of many statements, which only the simple query protocol runs in one round trip."""
    url = admin.url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    return psycopg.connect(url, autocommit=True, prepare_threshold=None, application_name="asgi_todo tests")


def _url(admin: sa.Engine, name: str) -> str:
    return admin.url.set(database=name).render_as_string(hide_password=False)
