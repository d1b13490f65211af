"""SQLAlchemy 2 typed models."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .limits import CLIENT_MAX, EMAIL_MAX, IDEMPOTENCY_KEY_MAX, NAME_MAX, TEXT_MAX


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite stores them naive, PostgreSQL as timestamptz."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store aware UTC datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None] | None:
        if dialect.name == "sqlite":
            return _from_sqlite
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _from_sqlite(value: str | None) -> datetime | None:
    """SQLite's text (naive UTC, as process_bind_param wrote it) parsed as aware UTC in one
    step: `datetime.replace(tzinfo=...)` costs five times the parse (keyword arguments), and
    a list page has 22 of them (measured with callgrind: 11,000 against 1,900 instructions)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value + "+00:00")
    except ValueError:  # not as we write it: it names an offset of its own
        parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is UTC:
        return parsed
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    # Never reuse a deleted user's id on SQLite: their unexpired tokens would open the new account.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), unique=True, index=True)
    hashed_password: Mapped[str] = mapped_column(String(100))
    fname: Mapped[str] = mapped_column(String(NAME_MAX), default="")
    lname: Mapped[str] = mapped_column(String(NAME_MAX), default="")
    is_superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bumped by a password change: access tokens carry it, and older ones stop working.
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    todos: Mapped[list[Todo]] = relationship(
        back_populates="owner", lazy="raise", order_by="Todo.id", passive_deletes=True
    )


class Todo(Base):
    __tablename__ = "todos"
    # A list's page walks one of these in id order and stops; its count reads only the index
    # (api/todos.py, tests/test_query_plans.py). Never reuse a deleted todo's id: its old
    # ETag would match the new todo.
    __table_args__ = (
        Index("ix_todos_owner_id_id", "owner_id", "id"),
        Index("ix_todos_owner_id_completed_id", "owner_id", "completed", "id"),
        Index("ix_todos_completed_id", "completed", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(String(TEXT_MAX))
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Counts changes; the ETag. Every change's UPDATE bumps it, and checks it when the
    # client sent If-Match (api/todos.py).
    version: Mapped[int] = mapped_column(Integer, default=1)
    due_date: Mapped[date | None] = mapped_column(Date, default=None)

    owner: Mapped[User] = relationship(back_populates="todos", lazy="raise")


class Login(Base):
    """One login (a password grant): its access tokens name it (`sid`), its refresh tokens are
    its family. Revoking it ends all of them at once."""

    __tablename__ = "logins"
    # Its address: an address the user has logged in from is familiar to the lockout.
    __table_args__ = (Index("ix_logins_user_id_client", "user_id", "client"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    client: Mapped[str] = mapped_column(String(CLIENT_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class RefreshToken(Base):
    """Stored as a SHA-256 digest; rotated on every use. Its family is its login."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    family: Mapped[str] = mapped_column(ForeignKey("logins.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class LoginFailures(Base):
    """Failed logins per account (`account:<email>`) and per client (`client:<address>`)."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class AppState(Base):
    """Small facts the service keeps about itself: the last reset, the generated key."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class IdempotencyKey(Base):
    """A request's Idempotency-Key with its response, stored in the transaction of the
    request's write; before it, for a request of several writes, a reservation (`token`,
    `locked_until`). See asgi_todo/idempotency.py."""

    __tablename__ = "idempotency_keys"
    # One row per caller and key: the guard of the concurrent first requests' race. Expired
    # keys are purged a few at a time, found through the index on expires_at.
    __table_args__ = (
        UniqueConstraint("caller", "key", name="uq_idempotency_keys_caller_key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    caller: Mapped[str] = mapped_column(String(CLIENT_MAX + 8))  # `user:<id>` or `client:<address>`
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX))
    fingerprint: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 of method, path and body
    token: Mapped[str] = mapped_column(String(32))  # the reservation's holder
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)  # None once answered
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[int | None] = mapped_column(Integer, default=None)  # None while reserved
    body: Mapped[str | None] = mapped_column(Text, default=None)  # None: no body (a 204)
    location: Mapped[str | None] = mapped_column(Text, default=None)
    etag: Mapped[str | None] = mapped_column(Text, default=None)
