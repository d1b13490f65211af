"""Alembic's environment: run by `asgi_todo.migrate` on the connection it holds (under the
start-up locks), or on a connection to DATABASE_URL when none is given.

Each revision runs in its own transaction, SQLite included: a revision that fails leaves the
database at the one before. On PostgreSQL every statement waits at most
MIGRATION_LOCK_TIMEOUT for a lock, so a migration stuck behind a long transaction fails
instead of queueing every request behind its own lock.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from asgi_todo.migrate import configure_connection, restore_connection
from asgi_todo.models import Base
from asgi_todo.settings import Settings, load_settings


def _run(connection: Connection, settings: Settings) -> None:
    external = configure_connection(connection, settings)
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            transaction_per_migration=True,
            transactional_ddl=True,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            compare_server_default=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        restore_connection(connection, external=external)


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("asgi-todo: migrations run on a database connection, not as SQL scripts")
    attributes = context.config.attributes
    settings: Settings = attributes.get("settings") or load_settings()
    connection: Connection | None = attributes.get("connection")
    if connection is not None:
        _run(connection, settings)
        return
    from asgi_todo.db import make_engine

    engine = make_engine(settings, pool_size=1)
    try:
        with engine.connect() as own:
            _run(own, settings)
    finally:
        engine.dispose()


main()
