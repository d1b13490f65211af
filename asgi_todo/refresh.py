"""Refresh tokens (RFC 6749 section 6): stored hashed, rotated on every use.

Each login starts a family; every refresh marks the presented token used and issues the next
one in the same family. A used token presented again means one of the two holders is a thief:
the whole family is revoked, so both must log in again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from . import security
from .auth import Principal
from .models import RefreshToken, User


@dataclass(frozen=True, slots=True)
class Grant:
    """What a login or a refresh hands out, besides the access token."""

    user_id: int
    token_version: int
    refresh_token: str


def start_family(session: Session, *, user: User, lifetime: timedelta, now: datetime) -> Grant:
    return _issue(session, user=user, family=uuid.uuid4().hex, lifetime=lifetime, now=now)


def rotate(session: Session, *, token: str, lifetime: timedelta, now: datetime) -> Grant | None:
    """The next token of the family, or None for a token that is not (or no longer) good.

    Returns rather than raises, so that revoking a family on reuse is committed.
    """
    stored = session.scalar(select(RefreshToken).where(RefreshToken.digest == security.digest(token)).with_for_update())
    if stored is None or stored.revoked_at is not None or stored.expires_at <= now:
        return None
    if stored.used_at is not None:
        _revoke(session, RefreshToken.family == stored.family, now=now)
        return None
    stored.used_at = now
    user = session.get(User, stored.user_id)
    if user is None:
        return None
    return _issue(session, user=user, family=stored.family, lifetime=lifetime, now=now)


def revoke_family(session: Session, *, user: Principal, token: str, now: datetime) -> None:
    """Logout: the family of the caller's own refresh token; anyone else's is left alone."""
    family = session.scalar(
        select(RefreshToken.family).where(
            RefreshToken.digest == security.digest(token), RefreshToken.user_id == user.id
        )
    )
    if family is not None:
        _revoke(session, RefreshToken.family == family, now=now)


def revoke_all(session: Session, *, user_id: int, now: datetime) -> None:
    _revoke(session, RefreshToken.user_id == user_id, now=now)


def _issue(session: Session, *, user: User, family: str, lifetime: timedelta, now: datetime) -> Grant:
    token = security.new_refresh_token()
    session.add(
        RefreshToken(
            digest=security.digest(token),
            family=family,
            user_id=user.id,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    return Grant(user.id, user.token_version, token)


def _revoke(session: Session, where: ColumnElement[bool], *, now: datetime) -> None:
    session.execute(update(RefreshToken).where(where, RefreshToken.revoked_at.is_(None)).values(revoked_at=now))
