"""The engine and the per-request unit of work: all SQL runs on a few threads of its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from .errors import ServiceUnavailable
from .settings import Settings
from .threads import Threads

logger = logging.getLogger("asgi_todo.db")

T = TypeVar("T")
Args = ParamSpec("Args")

# What a lost or unreachable database raises.
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
# SQLSTATE of a write refused by a server in recovery: a standby, or a primary its failover
# manager has demoted (docs/high-availability.md).
READ_ONLY_SQL_TRANSACTION = "25006"
# PostgreSQL: a connection is replaced after this long (the pool's recycle, and the SQL
# threads' own connections'), so a server-side limit on a connection's age never hits one.
RECYCLE_SECONDS = 1800


def make_engine(settings: Settings, *, pool_size: int) -> Engine:
    if settings.sql_echo:
        # A level, not create_engine(echo=True): echo adds SQLAlchemy's own stdout handler,
        # which would print every statement a second time, outside our format.
        logging.getLogger("sqlalchemy.engine.Engine").setLevel(logging.INFO)
    if settings.is_sqlite:
        engine = create_engine(
            settings.database_url,
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"check_same_thread": False, "timeout": settings.db_connect_timeout},
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    timeout = int(settings.db_connect_timeout)
    connect_args: dict[str, Any] = {
        "connect_timeout": max(timeout, 1),
        "application_name": "asgi_todo",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "tcp_user_timeout": max(timeout, 1) * 1000,
    }
    if not settings.db_prepared_statements:
        # psycopg prepares a statement on the server after its fifth run on a connection.
        # Behind a pooler in transaction mode the next run may land on another server
        # connection, where it does not exist.
        connect_args["prepare_threshold"] = None
    engine = create_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=settings.db_connect_timeout,
        pool_recycle=RECYCLE_SECONDS,
        connect_args=connect_args,
    )
    event.listen(engine, "handle_error", _read_only_is_unavailable)
    return engine


def _read_only_is_unavailable(context: ExceptionContext) -> DBAPIError | None:
    """A write refused because the server is read-only means the connection leads to a
    primary that was demoted (or to a standby): the primary is elsewhere now. Treated as a
    lost connection: this one is invalidated (and, through Database._note_disconnect, every
    other opened before it is replaced at its next use, since they lead to the same server),
    and the error is an OperationalError, which every caller already answers with a 503.
    Registered before Database's own handler, which reads `is_disconnect`."""
    original = context.original_exception
    if getattr(original, "sqlstate", None) != READ_ONLY_SQL_TRANSACTION:
        return None
    context.is_disconnect = True
    return OperationalError(context.statement, context.parameters, original, connection_invalidated=True)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # We issue BEGIN ourselves (see _sqlite_begin), so the driver must not.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # A writer takes the write lock up front: upgrading a read transaction later fails at
    # once with "database is locked" when another process committed in between.
    options = connection.get_execution_options()
    if not options.get("sqlite_autocommit"):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


class Database:
    """The engine plus a few threads: all SQL runs there, one hop per request."""

    def __init__(self, settings: Settings) -> None:
        # SQLite: one thread. Its driver drops the GIL around every call, and a second thread
        # spends that time waiting to get it back (measured: -20% requests/s with two).
        threads = settings.db_threads or (1 if settings.is_sqlite else 4)
        self.settings = settings
        self.engine = make_engine(settings, pool_size=threads)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self.threads = threads
        self._threads = Threads(threads, name="asgi_todo-db")
        # Reads run without BEGIN/COMMIT. SQLite: our begin hook skips its BEGIN (the driver
        # is in autocommit mode); PostgreSQL: the driver's autocommit, switched on the
        # connection without a round trip (_transaction).
        self._read_options: dict[str, Any] = {}
        self._write_options: dict[str, Any] = {}
        if settings.is_sqlite:
            self._read_options = {"sqlite_autocommit": True, "sqlite_immediate": False}
            self._write_options = {"sqlite_autocommit": False, "sqlite_immediate": True}
        self._recycle = float("inf") if settings.is_sqlite else RECYCLE_SECONDS
        # Each SQL thread keeps one connection from the pool, opened at its first unit of
        # work: a checkout and a check-in per unit of work cost a request more than 5% more
        # instructions on either database (tests/bench/results/connection-per-thread.txt).
        self._owned = threading.local()
        self._held: list[Connection] = []
        # One item per unit of work waiting for (or opening) a pool connection. A list's
        # append and pop are atomic, so the SQL threads keep it without a lock; the metrics
        # sample its length instead of writing a gauge twice per request.
        self._connecting: list[None] = []
        # When a connection was last found dead: the others opened before then are most likely
        # dead too (the database restarted), so each is replaced before its next use instead of
        # failing one more request. The pool does the same for the connections it holds, but
        # these are never checked back in.
        self._lost = -1.0
        event.listen(self.engine, "handle_error", self._note_disconnect)

    def connecting(self) -> int:
        """Units of work waiting for (or opening) a pool connection now."""
        return len(self._connecting)

    def queued(self) -> int:
        """Units of work waiting for an SQL thread now."""
        return self._threads.queued()

    async def read(
        self, session: Session, fn: Callable[Concatenate[Session, Args], T], /, *args: Args.args, **kwargs: Args.kwargs
    ) -> T:
        """fn(session, **kwargs) off the event loop, each statement on its own (autocommit):
        no BEGIN and COMMIT around a read, which on PostgreSQL are two more round trips.
        A lost or unreachable database becomes a 503."""
        return await self._threads.run(
            partial(self._transaction, session, partial(fn, session, *args, **kwargs), False)
        )

    async def write(
        self, session: Session, fn: Callable[Concatenate[Session, Args], T], /, *args: Args.args, **kwargs: Args.kwargs
    ) -> T:
        """fn(session, **kwargs) in one transaction, off the event loop; committed before
        this returns (so before the response starts), or rolled back on error. SQLite takes
        its write lock at BEGIN.

        Upgrading a read transaction later fails at once ("database is locked") when
        another process committed in between; taking the lock first waits instead.
        """
        return await self._threads.run(partial(self._transaction, session, partial(fn, session, *args, **kwargs), True))

    def _transaction(self, session: Session, work: Callable[[], T], write: bool) -> T:
        try:
            try:
                self._begin(session, write)
                result = work()
                session.commit()
                return result
            except BaseException:
                session.rollback()
                raise
        except UNAVAILABLE as exc:
            logger.warning("database unavailable: %s", str(exc).splitlines()[0])
            raise ServiceUnavailable() from exc

    def _begin(self, session: Session, write: bool) -> None:
        """Binds the session to this SQL thread's connection and begins its unit of work."""
        connection = self._connection()
        if not self.settings.is_sqlite:
            # Not execution_options(isolation_level=...): on a connection that is never
            # returned to the pool, each call would add a reset to run at check-in.
            connection.connection.dbapi_connection.autocommit = not write  # type: ignore[union-attr]
        session.bind = connection
        session.connection(execution_options=self._write_options if write else self._read_options)

    def _connection(self) -> Connection:
        """This SQL thread's own connection (a new one when it is older than the recycle time).
        One lost with the database reconnects at its next use."""
        owned = self._owned
        connection: Connection | None = getattr(owned, "connection", None)
        if connection is not None and owned.since > self._lost and time.monotonic() - owned.since < self._recycle:
            return connection
        if connection is not None:  # forgotten first: opening its successor may fail
            owned.connection = None
            self._held.remove(connection)
            connection.close()
        self._connecting.append(None)
        try:
            connection = self.engine.connect()
        finally:
            self._connecting.pop()
        owned.connection, owned.since = connection, time.monotonic()
        self._held.append(connection)
        return connection

    def _note_disconnect(self, context: ExceptionContext) -> None:
        if context.is_disconnect:
            self._lost = time.monotonic()

    def close(self) -> None:
        self._threads.close()
        for connection in self._held:
            connection.close()
        self.engine.dispose()
