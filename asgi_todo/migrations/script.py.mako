"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Expand only (see the docs: Operations, "Migrations"): add nullable or defaulted columns and new
tables here; drop or tighten only in a later release, once no running code reads them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


# Every table ("name") and column ("table.column") downgrade() drops: `asgi-todo db downgrade`
# then wants --yes when one of them holds rows (asgi_todo.migrate.dropped_rows).
DROPS: tuple[str, ...] = ()


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
