"""The prepared PostgreSQL databases (tests/databases.py): whatever a test did to its database,
the next test that gets it finds the prepared state, or gets a new copy when the shape changed."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from .databases import PreparedPostgres


def _contents(url: str) -> dict[str, Any]:
    """Every table's rows, in order, and what each sequence hands out next."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            tables = connection.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            ).scalars()
            every = sa.select(sa.text("*")).order_by(sa.text("1"))
            found: dict[str, Any] = {
                table: connection.execute(every.select_from(sa.table(table))).all() for table in tables
            }
            for sequence in connection.exec_driver_sql(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1"
            ).scalars():
                found[sequence] = connection.scalar(sa.select(sa.func.nextval(sequence)))
            connection.rollback()
            return found
    finally:
        engine.dispose()


def _run(url: str, *statements: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture
def prepared(prepared_postgres: PreparedPostgres) -> PreparedPostgres:
    """The session's prepared databases, with a free database of the prepared state to look at."""
    with prepared_postgres.database():
        pass
    return prepared_postgres


def test_a_used_database_is_handed_out_again_in_the_prepared_state(prepared: PreparedPostgres) -> None:
    with prepared.database() as url:
        expected = _contents(url)  # reading the sequences used them: the restore sets them back
    with prepared.database() as url:
        assert _contents(url) == expected
        _run(
            url,
            "INSERT INTO todos (text, completed, owner_id, created_at, updated_at, version)"
            " SELECT 'more', false, 2, now(), now(), 1 FROM generate_series(1, 50)",
            "UPDATE users SET fname = 'Changed', token_version = token_version + 1 WHERE id = 1",
            "DELETE FROM todos WHERE id = 1",
            "INSERT INTO app_state (key, value, updated_at) VALUES ('left', 'behind', now())",
            "SELECT nextval('users_id_seq') FROM generate_series(1, 10)",
        )
        # A connection the test leaves open, in a transaction that holds a row lock: ended.
        left = sa.create_engine(url, poolclass=sa.NullPool)
        held = left.connect()
        held.exec_driver_sql("SELECT * FROM users WHERE id = 2 FOR UPDATE")
        used = url
    try:
        with prepared.database() as url:
            assert url == used, "the same database, put back in place"
            assert _contents(url) == expected
    finally:
        held.invalidate()
        left.dispose()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("ALTER TABLE todos ADD COLUMN extra integer", id="column-added"),
        pytest.param("ALTER TABLE todos ALTER COLUMN text TYPE text", id="column-type"),
        pytest.param("ALTER TABLE todos ALTER COLUMN text TYPE varchar(100000)", id="column-length"),
        pytest.param("ALTER TABLE todos ALTER COLUMN completed SET DEFAULT true", id="default"),
        pytest.param("DROP INDEX ix_todos_owner_id_id", id="index-dropped"),
        pytest.param("ALTER TABLE users ADD CONSTRAINT named CHECK (id > 0)", id="constraint"),
        pytest.param("ALTER SEQUENCE todos_id_seq INCREMENT BY 2", id="sequence"),
        pytest.param("CREATE FUNCTION extra() RETURNS integer LANGUAGE sql AS 'SELECT 1'", id="function"),
        pytest.param("DROP TABLE login_failures", id="table-dropped"),
        pytest.param(
            "CREATE TABLE copy (LIKE login_failures INCLUDING ALL); DROP TABLE login_failures;"
            " ALTER TABLE copy RENAME TO login_failures",
            id="table-made-again",
        ),
    ],
)
def test_a_database_whose_shape_changed_is_dropped_and_replaced(prepared: PreparedPostgres, change: str) -> None:
    with prepared.database() as url:
        expected = _contents(url)
        _run(url, *change.split(";"))
        changed = url
    with prepared.database() as url:
        assert url != changed, "a new copy"
        assert _contents(url) == expected
    name = sa.make_url(changed).database
    with prepared.admin.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first() is None
