"""Logins and their refresh tokens (RFC 6749 section 6): stored hashed, rotated on every use.

Each login is a row; its refresh tokens are its family, and its access tokens name it. Every
refresh marks the presented token used and issues the next one of the login. A used token
presented again means one of two holders is a thief: the login is revoked, so both must log
in again. Revoking is one flag on the login's row, checked on every use of any of its tokens,
so a token a concurrent rotation has just added cannot escape it.

Every transaction that adds to a user's logins (a login, a rotation) first locks the user's
row, as a password change and an account deletion do by changing it: the user's session
changes happen one at a time, in the same lock order everywhere.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.orm import Session

from . import security
from .limits import CLIENT_MAX
from .models import Login, RefreshToken, User


@dataclass(frozen=True, slots=True)
class Grant:
    """What a login or a refresh hands out, besides the access token."""

    user_id: int
    token_version: int
    login: str
    refresh_token: str


def lock_user(session: Session, *, user_id: int) -> int | None:
    """Lock the user's row for this transaction; their token version, or None when deleted.

    FOR NO KEY UPDATE: it waits for a password change or a deletion, and they for it, while
    a todo's insert (which only needs the key) goes on. SQLite's writers hold the whole
    database already.
    """
    version: int | None = session.scalar(
        select(User.token_version).where(User.id == user_id).with_for_update(key_share=True)
    )
    return version


def start(
    session: Session, *, user_id: int, token_version: int, client: str, lifetime: timedelta, now: datetime
) -> Grant:
    """A new login of a user whose row the caller has locked (lock_user)."""
    login = uuid.uuid4().hex
    session.execute(insert(Login).values(id=login, user_id=user_id, client=client[:CLIENT_MAX], created_at=now))
    return _issue(session, user_id=user_id, token_version=token_version, login=login, lifetime=lifetime, now=now)


class Reused:
    """What `rotate` answers for a spent token presented again: its login is now revoked."""


REUSED = Reused()


def rotate(session: Session, *, token: str, lifetime: timedelta, now: datetime) -> Grant | Reused | None:
    """The next token of the login; REUSED for a spent token (the login is revoked); None for
    a token that is not (or no longer) good.

    Returns rather than raises, so that revoking the login on reuse is committed.
    """
    digest = security.digest(token)
    # Race: two rotations of one token, or of two tokens of one login (a thief and the
    # victim), or a rotation and a deletion, which would deadlock on PostgreSQL
    # (tests/test_accounts.py, revocation is final). The user's row is locked first; the
    # token and its login are read after, so they are as the last lock holder left them.
    owner = session.execute(
        select(User.id, User.token_version)
        .join(Login, Login.user_id == User.id)
        .join(RefreshToken, RefreshToken.family == Login.id)
        .where(RefreshToken.digest == digest)
        .with_for_update(of=User, key_share=True)
    ).first()
    if owner is None:
        return None
    stored = session.execute(
        select(RefreshToken.id, RefreshToken.family, RefreshToken.expires_at, RefreshToken.used_at, Login.revoked_at)
        .join(Login, RefreshToken.family == Login.id)
        .where(RefreshToken.digest == digest)
    ).first()
    if stored is None or stored.revoked_at is not None or stored.expires_at <= now:
        return None
    if stored.used_at is not None:
        _revoke(session, Login.id == stored.family, now=now)
        return REUSED
    session.execute(update(RefreshToken).where(RefreshToken.id == stored.id).values(used_at=now))
    return _issue(
        session, user_id=owner.id, token_version=owner.token_version, login=stored.family, lifetime=lifetime, now=now
    )


def login_of(session: Session, *, user_id: int, token: str) -> str | None:
    """The login of one of the user's refresh tokens; anyone else's is None."""
    login: str | None = session.scalar(
        select(Login.id)
        .join(RefreshToken, RefreshToken.family == Login.id)
        .where(RefreshToken.digest == security.digest(token), Login.user_id == user_id)
    )
    return login


def revoke(session: Session, *, user_id: int, login: str, now: datetime) -> None:
    """Logout: one of the user's logins, its access and refresh tokens alike."""
    _revoke(session, Login.id == login, Login.user_id == user_id, now=now)


def revoke_all(session: Session, *, user_id: int, now: datetime) -> None:
    _revoke(session, Login.user_id == user_id, now=now)


def is_familiar(client: str) -> ColumnElement[bool]:
    """Has the user (of the query this goes into) logged in from this address before?"""
    return select(Login.id).where(Login.user_id == User.id, Login.client == client[:CLIENT_MAX]).exists()


def _issue(
    session: Session, *, user_id: int, token_version: int, login: str, lifetime: timedelta, now: datetime
) -> Grant:
    token = security.new_refresh_token()
    session.execute(
        insert(RefreshToken).values(
            digest=security.digest(token), family=login, created_at=now, expires_at=now + lifetime
        )
    )
    return Grant(user_id, token_version, login, token)


def _revoke(session: Session, *where: ColumnElement[bool], now: datetime) -> None:
    # Race: revoking a login's token rows missed the row a concurrent rotation was inserting
    # (READ COMMITTED re-checks only the rows it waited for), and that token lived on
    # (tests/test_accounts.py, revocation is final). The flag is on the login's row instead,
    # and every use of any of its tokens reads it.
    session.execute(update(Login).where(*where, Login.revoked_at.is_(None)).values(revoked_at=now))
