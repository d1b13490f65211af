"""The schema of asgi_todo 1.0: users, todos, refresh tokens, login failures, app state.

Revision ID: 0001
Revises:
Create Date: 2026-12-01

On an empty database this creates every table. A database that already has tables was made
before migrations existed, and is recognised by its users table:

- made by asgi_todo (`create_all`, has `users.is_superuser`): the tables it lacks are created,
  the rest is kept as it is, and Alembic stamps it 0001;
- made by the FastAPI original (no `is_superuser`): upgraded in place, every row kept. Emails
  become lower case (logins look them up that way), missing names become "", a missing
  `updated_at` becomes `created_at`, timestamps become UTC-aware, and nobody is a superuser
  (the original stores no roles; `asgi-todo users promote EMAIL` names them). Rows that the
  new schema cannot hold (no email or owner, two emails equal but for case, over-long text)
  stop the upgrade with a message that lists them, and nothing changes.

Downgrading drops every table: the base is an empty database.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from asgi_todo.migrate import MigrationError

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# The sizes of 1.0, written out: a revision never follows later changes to the models.
EMAIL_MAX = 320
NAME_MAX = 100
HASH_MAX = 100
TEXT_MAX = 1000
_AWARE = sa.DateTime(timezone=True)


def _create_users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(EMAIL_MAX), nullable=False),
        sa.Column("hashed_password", sa.String(HASH_MAX), nullable=False),
        sa.Column("fname", sa.String(NAME_MAX), nullable=False),
        sa.Column("lname", sa.String(NAME_MAX), nullable=False),
        sa.Column("is_superuser", sa.Boolean(), nullable=False),
        sa.Column("token_version", sa.Integer(), nullable=False),
        sa.Column("created_at", _AWARE, nullable=False),
        sa.Column("updated_at", _AWARE, nullable=False),
        sa.Index("ix_users_email", "email", unique=True),
        sqlite_autoincrement=True,
    )


def _create_todos() -> None:
    op.create_table(
        "todos",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("text", sa.String(TEXT_MAX), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", _AWARE, nullable=False),
        sa.Column("updated_at", _AWARE, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Index("ix_todos_owner_id", "owner_id"),
        sqlite_autoincrement=True,
    )


def _create_refresh_tokens() -> None:
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", _AWARE, nullable=False),
        sa.Column("expires_at", _AWARE, nullable=False),
        sa.Column("used_at", _AWARE, nullable=True),
        sa.Column("revoked_at", _AWARE, nullable=True),
        sa.Index("ix_refresh_tokens_family", "family"),
        sa.Index("ix_refresh_tokens_user_id", "user_id"),
    )


def _create_login_failures() -> None:
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", _AWARE, nullable=False),
        sa.Column("locked_until", _AWARE, nullable=True),
    )


def _create_app_state() -> None:
    op.create_table(
        "app_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", _AWARE, nullable=False),
    )


# In the order they are created; dropped in reverse.
_TABLES: dict[str, Callable[[], None]] = {
    "users": _create_users,
    "todos": _create_todos,
    "refresh_tokens": _create_refresh_tokens,
    "login_failures": _create_login_failures,
    "app_state": _create_app_state,
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    if "users" in existing and "is_superuser" not in {column["name"] for column in inspector.get_columns("users")}:
        _upgrade_original()
    for name, create in _TABLES.items():
        if name not in existing:
            create()


# What downgrade() drops ("table" or "table.column"): `asgi-todo db downgrade` wants --yes
# when any of it holds rows (asgi_todo.migrate.dropped_rows).
DROPS: tuple[str, ...] = tuple(reversed(_TABLES))


def downgrade() -> None:
    for name in DROPS:
        op.drop_table(name)


# The FastAPI original's database (its commit ee30330)


def _upgrade_original() -> None:
    _refuse_rows_that_do_not_fit()
    op.execute("UPDATE users SET email = lower(email) WHERE email <> lower(email)")
    op.execute("UPDATE users SET fname = '' WHERE fname IS NULL")
    op.execute("UPDATE users SET lname = '' WHERE lname IS NULL")
    op.execute("UPDATE todos SET text = '' WHERE text IS NULL")
    op.execute(sa.text("UPDATE todos SET completed = :no WHERE completed IS NULL").bindparams(no=False))
    for table in ("users", "todos"):
        op.execute(f"UPDATE {table} SET updated_at = created_at WHERE updated_at IS NULL")  # noqa: S608 - fixed names

    sqlite = op.get_bind().dialect.name == "sqlite"
    recreate = {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}} if sqlite else {}
    # The original's SQLite foreign key has no name; this gives it one to drop it by.
    naming = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}
    with op.batch_alter_table("users", **recreate) as users:  # type: ignore[arg-type]
        users.drop_index("ix_users_id")
        users.add_column(sa.Column("is_superuser", sa.Boolean(), nullable=False, server_default=sa.false()))
        users.add_column(sa.Column("token_version", sa.Integer(), nullable=False, server_default="0"))
        users.alter_column("email", type_=sa.String(EMAIL_MAX), nullable=False)
        users.alter_column("hashed_password", type_=sa.String(HASH_MAX))
        users.alter_column("fname", type_=sa.String(NAME_MAX), nullable=False)
        users.alter_column("lname", type_=sa.String(NAME_MAX), nullable=False)
        _make_aware(users)
    with op.batch_alter_table("todos", naming_convention=naming, **recreate) as todos:  # type: ignore[arg-type]
        todos.drop_index("ix_todos_id")
        todos.drop_index("ix_todos_text")  # PostgreSQL refused a text over ~2.7 KB because of it
        todos.drop_constraint("todos_owner_id_fkey", type_="foreignkey")
        todos.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        todos.alter_column("text", type_=sa.String(TEXT_MAX), nullable=False)
        todos.alter_column("completed", existing_type=sa.Boolean(), nullable=False)
        todos.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
        _make_aware(todos)
        todos.create_foreign_key("todos_owner_id_fkey", "users", ["owner_id"], ["id"], ondelete="CASCADE")
        todos.create_index("ix_todos_owner_id", ["owner_id"])
    # The defaults were for the rows already there; the code always sets these columns.
    for table, columns in (("users", ("is_superuser", "token_version")), ("todos", ("version",))):
        with op.batch_alter_table(table, **recreate) as batch:  # type: ignore[arg-type]
            for column in columns:
                batch.alter_column(column, server_default=None)


def _make_aware(batch: object) -> None:
    """Naive UTC (the original's `datetime.utcnow()`) to timestamptz on PostgreSQL; SQLite
    keeps the same text, which asgi_todo reads as UTC."""
    from alembic.operations import BatchOperations

    assert isinstance(batch, BatchOperations)
    for column in ("created_at", "updated_at"):
        batch.alter_column(
            column,
            type_=_AWARE,
            existing_type=sa.DateTime(),
            nullable=False,
            postgresql_using=f"{column} AT TIME ZONE 'UTC'",
        )


def _refuse_rows_that_do_not_fit() -> None:
    checks = {
        "users without an email": "SELECT id FROM users WHERE email IS NULL",
        "users whose emails differ only in case": (
            "SELECT id FROM users WHERE lower(email) IN"
            " (SELECT lower(email) FROM users GROUP BY lower(email) HAVING count(*) > 1)"
        ),
        f"users with an email over {EMAIL_MAX} or a name over {NAME_MAX} characters": (
            f"SELECT id FROM users WHERE length(email) > {EMAIL_MAX}"  # noqa: S608 - constants
            f" OR length(fname) > {NAME_MAX} OR length(lname) > {NAME_MAX}"
        ),
        "todos without an owner": "SELECT id FROM todos WHERE owner_id IS NULL",
        f"todos with a text over {TEXT_MAX} characters": f"SELECT id FROM todos WHERE length(text) > {TEXT_MAX}",  # noqa: S608
    }
    bind = op.get_bind()
    problems = []
    for what, query in checks.items():
        ids = bind.execute(sa.text(f"{query} ORDER BY id LIMIT 11")).scalars().all()
        if ids:
            shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
            problems.append(f"{what} (ids {shown})")
    if problems:
        raise MigrationError(
            "cannot upgrade the FastAPI original's database: " + "; ".join(problems) + ". Fix or delete these rows"
            " and run the upgrade again; nothing was changed."
        )
