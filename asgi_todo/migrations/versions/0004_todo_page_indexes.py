"""Todos get the indexes that a list's page walks in id order.

(owner_id, id), (owner_id, completed, id) and (completed, id); (owner_id, id) replaces the
owner_id index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Expand only: the release before names no index, so it keeps working while this runs and
after (its own list query, `count(*) over()`, answers the same, at its old cost). Each
index is justified by a plan in tests/test_query_plans.py: without (owner_id, id) a page of
the owner's todos walks the primary key throwing other owners' away (PostgreSQL) or sorts
every todo of the owner (SQLite); without the two with `completed` a filtered page or count
reads past every todo of the other kind. The owner_id index goes: (owner_id, id)
serves everything it served (its first column), the ON DELETE CASCADE of a user included.
On PostgreSQL, CREATE INDEX holds off writes to todos (not reads) while it builds.
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_INDEXES = {
    "ix_todos_owner_id_id": ["owner_id", "id"],
    "ix_todos_owner_id_completed_id": ["owner_id", "completed", "id"],
    "ix_todos_completed_id": ["completed", "id"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "todos", columns)
    op.drop_index("ix_todos_owner_id", table_name="todos")


DROPS: tuple[str, ...] = ()  # downgrade() drops indexes only (asgi_todo.migrate.dropped_rows)


def downgrade() -> None:
    op.create_index("ix_todos_owner_id", "todos", ["owner_id"])
    for name in _INDEXES:
        op.drop_index(name, table_name="todos")
