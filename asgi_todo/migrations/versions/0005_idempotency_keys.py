"""Idempotency keys: each POST's key, its caller, its request's fingerprint and its response.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Expand only: a new table that the release before never names, so it keeps working while this
runs and after (it ignores the Idempotency-Key header, as before). Downgrading drops the table
and with it every stored key: a retry after the downgrade is a new request.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_AWARE = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("caller", sa.String(72), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("locked_until", _AWARE, nullable=True),
        sa.Column("expires_at", _AWARE, nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.UniqueConstraint("caller", "key", name="uq_idempotency_keys_caller_key"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
