"""Prepared databases: the schema and the demo data are made once per test session (per
xdist worker), and every test gets a database in exactly that state.

SQLite: each test gets its own copy of the prepared file.

PostgreSQL: each test gets a database made with `CREATE DATABASE ... TEMPLATE` from the
prepared one, and when the test is over that database is put back to the prepared state in
place (its tables emptied and refilled with the template's rows, its sequences set back) for
the next test, instead of being dropped. Measured on the 2-core test machine: a copy costs
about 60 ms and a drop 100 ms to over a second, since every DROP DATABASE forces a checkpoint
that writes out the pages of every database copied since the last one; putting the rows back
costs about 10 ms. A test that changed the schema (a migration, a dropped table) leaves a
database whose shape differs from the template's: that one is dropped and the next test gets a
new copy. Whatever a test did, the next one starts from the prepared state and sees no row of
another test's. Every database is dropped at the end of the session.
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

import sqlalchemy as sa

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


# The shape of a database, to tell whether a test changed it: tables, columns, indexes,
# constraints, sequences and the schema's revision.
_SHAPE = """
SELECT md5(concat_ws('|',
  (SELECT string_agg(concat_ws(':', table_name, column_name, data_type, is_nullable, column_default), ','
                     ORDER BY table_name, column_name)
     FROM information_schema.columns WHERE table_schema = 'public'),
  (SELECT string_agg(indexdef, ',' ORDER BY indexdef) FROM pg_indexes WHERE schemaname = 'public'),
  (SELECT string_agg(conname || pg_get_constraintdef(oid), ',' ORDER BY conname)
     FROM pg_constraint WHERE connamespace = 'public'::regnamespace),
  (SELECT string_agg(sequencename, ',' ORDER BY sequencename) FROM pg_sequences WHERE schemaname = 'public'),
  (SELECT string_agg(viewname, ',' ORDER BY viewname) FROM pg_views WHERE schemaname = 'public'),
  (SELECT string_agg(proname, ',' ORDER BY proname) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)
))
"""


@dataclass
class _Snapshot:
    """What a prepared database holds: its shape, every table's rows, every sequence's value."""

    shape: str
    rows: dict[str, list[dict[str, Any]]]  # parents before children
    sequences: dict[str, tuple[int, bool]]

    @classmethod
    def take(cls, connection: sa.Connection) -> _Snapshot:
        shape = connection.exec_driver_sql(_SHAPE).scalar_one()
        order: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        tables = connection.exec_driver_sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for table in tables.scalars():
            order.add(table)
        for child, parent in connection.exec_driver_sql(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
            " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
        ):
            order.add(child, parent)
        every = sa.select(sa.text("*"))
        rows = {
            name: [dict(row) for row in connection.execute(every.select_from(sa.table(name))).mappings()]
            for name in order.static_order()
        }
        sequences = {  # a sequence never used yet has no last value: its next is 1
            name: (1, False) if value is None else (int(value), True)
            for name, value in connection.exec_driver_sql(
                "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'"
            )
        }
        return cls(shape, rows, sequences)

    def restore(self, connection: sa.Connection) -> None:
        """Back to the snapshot, in the caller's transaction."""
        for name in reversed(self.rows):  # children first; a few rows, so cheaper than TRUNCATE
            connection.execute(sa.delete(sa.table(name)))
        for name, rows in self.rows.items():
            if rows:
                connection.execute(sa.insert(sa.table(name, *map(sa.column, rows[0]))), rows)
        for name, (value, called) in self.sequences.items():
            connection.exec_driver_sql("SELECT setval(%s, %s, %s)", (f'public."{name}"', value, called))


@dataclass
class PreparedPostgres:
    """The template and the databases copied from it that wait for their next test."""

    admin: sa.Engine
    prefix: str
    template: str
    snapshot: _Snapshot
    _free: list[str] = field(default_factory=list)
    _made: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, admin: sa.Engine) -> PreparedPostgres:
        prefix = f"asgi_todo_test_{uuid.uuid4().hex[:8]}"
        template = f"{prefix}_template"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{template}"')
        url = _url(admin, template)
        prepare(url)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            with engine.connect() as connection:
                snapshot = _Snapshot.take(connection)
        finally:
            engine.dispose()
        return cls(admin, prefix, template, snapshot)

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
        self._made.add(name)
        return name

    def _restore(self, name: str) -> bool:
        """Put a used database back to the prepared state; False when its shape changed."""
        with self.admin.connect() as connection:  # whatever the test left connected is done
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        engine = sa.create_engine(_url(self.admin, name), poolclass=sa.NullPool)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
                if connection.exec_driver_sql(_SHAPE).scalar_one() != self.snapshot.shape:
                    return False
                self.snapshot.restore(connection)
            return True
        except sa.exc.DBAPIError:
            return False
        finally:
            engine.dispose()

    def _drop(self, name: str) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._made.discard(name)


def _url(admin: sa.Engine, name: str) -> str:
    return admin.url.set(database=name).render_as_string(hide_password=False)
