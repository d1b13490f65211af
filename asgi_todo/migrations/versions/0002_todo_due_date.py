"""Todos get an optional due date.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Expand only: a nullable column, no default, no backfill. The release before it never names
the column, so it keeps reading and writing todos while this runs and after (its new todos
have no due date). Dropping the column is a downgrade only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("todos", sa.Column("due_date", sa.Date(), nullable=True))


DROPS: tuple[str, ...] = ("todos.due_date",)  # what downgrade() drops (asgi_todo.migrate.dropped_rows)


def downgrade() -> None:
    # SQLite copies the table without the column; keep its AUTOINCREMENT.
    with op.batch_alter_table("todos", table_kwargs={"sqlite_autoincrement": True}) as todos:
        todos.drop_column("due_date")
