"""Logins as rows; a refresh token belongs to its login (its family).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Not expand-only: refresh_tokens loses user_id and revoked_at, which the release before reads.
Refresh tokens issued before it cannot name a login row, so they are dropped: every client
logs in again once (access tokens of the release before carry no login and stop working too).
Downgrading drops the logins and, again, every refresh token.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_AWARE = sa.DateTime(timezone=True)


def _refresh_tokens(owner: sa.Column[int] | sa.Column[str], *extra: sa.Column[object]) -> None:
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        owner,
        sa.Column("created_at", _AWARE, nullable=False),
        sa.Column("expires_at", _AWARE, nullable=False),
        sa.Column("used_at", _AWARE, nullable=True),
        *extra,
    )


def upgrade() -> None:
    op.create_table(
        "logins",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("created_at", _AWARE, nullable=False),
        sa.Column("revoked_at", _AWARE, nullable=True),
        sa.Index("ix_logins_user_id_client", "user_id", "client"),
    )
    op.drop_table("refresh_tokens")
    _refresh_tokens(
        sa.Column("family", sa.String(32), sa.ForeignKey("logins.id", ondelete="CASCADE"), nullable=False),
    )
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])


# What downgrade() drops (asgi_todo.migrate.dropped_rows): the sessions.
DROPS: tuple[str, ...] = ("refresh_tokens", "logins")


def downgrade() -> None:
    for name in DROPS:
        op.drop_table(name)
    _refresh_tokens(
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("revoked_at", _AWARE, nullable=True),
    )
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"])
