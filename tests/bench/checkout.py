"""asgi_todo with a pool checkout per unit of work instead of each SQL thread's own
connection: for the benchmark only (`python -m tests.bench.stack --feature
connection-per-thread`), to show what the SQL threads' own connections save.

This is how asgi_todo reached the database before it kept them (2026-12-01): the request's
session checks a connection out of the pool at its first statement and back in at its commit
or rollback; a PostgreSQL read runs in autocommit through the isolation level, which the pool
resets at check-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest.mock import patch

from sqlalchemy.orm import Session

from asgi_todo.db import Database


@contextmanager
def checkout_per_unit_of_work() -> Iterator[None]:
    """While it lasts, every unit of work checks a connection out of the pool."""
    with patch.object(Database, "_begin", _begin_with_checkout):
        yield


def _begin_with_checkout(self: Database, session: Session, write: bool) -> None:
    options = self._write_options if write else self._read_options
    if not self.settings.is_sqlite and not write:
        options = {"isolation_level": "AUTOCOMMIT"}
    self._connecting.append(None)  # the pool gauge's count, as Database._connection keeps it
    try:
        session.connection(execution_options=options)
    finally:
        self._connecting.pop()
