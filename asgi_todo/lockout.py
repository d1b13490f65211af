"""Brute-force limits on password checks, counted in the database so that every worker and
every host shares them.

Failures are counted per account (the email tried, whether or not it exists, so a 429 does
not reveal which accounts exist) and per client address. Past a threshold the key is locked
for a window that doubles with every further failure, up to a ceiling: a lock always ends,
so an attacker cannot shut a victim out for good. A quiet hour forgets the count, and a
successful login forgets the account's count.

Sign-ups are counted per client address the same way (`signup:<address>`), before their
bcrypt work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import LoginFailures
from .schemas import canonical_email

FORGET_AFTER = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Limits:
    per_account: int
    per_client: int
    lock_seconds: int
    lock_max_seconds: int
    signups_per_client: int
    signup_window_seconds: int

    def lock_for(self, failures: int, threshold: int) -> int:
        """Seconds locked after `failures`: none below the threshold, then doubling."""
        if failures < threshold:
            return 0
        seconds: int = self.lock_seconds * 2 ** min(failures - threshold, 32)
        return min(seconds, self.lock_max_seconds)


@dataclass(frozen=True, slots=True)
class Keys:
    account: str
    client: str

    @classmethod
    def of(cls, *, email: str, client: str) -> Keys:
        return cls(f"account:{canonical_email(email.strip())[:320]}", f"client:{client[:64]}")


def retry_after(session: Session, *, keys: Keys, now: datetime) -> int | None:
    """Seconds until the later of the two locks ends, or None when neither is locked."""
    return _wait(session, (keys.account, keys.client), now=now)


def _wait(session: Session, keys: tuple[str, ...], *, now: datetime) -> int | None:
    until = session.scalar(
        select(LoginFailures.locked_until)
        .where(LoginFailures.key.in_(keys), LoginFailures.locked_until > now)
        .order_by(LoginFailures.locked_until.desc())
        .limit(1)
    )
    return None if until is None else max(1, math.ceil((until - now).total_seconds()))


def reserve_sign_up(session: Session, *, client: str, limits: Limits, now: datetime) -> int | None:
    """Counts one sign-up from `client` before its bcrypt work; the seconds to wait past the
    limit, else None.

    The count is one atomic upsert, so of any number of concurrent sign-ups at most the limit
    get through (tests/test_signups.py releases a burst). Past the limit the address is
    locked for the window; attempts while it is locked are not counted, so the lock ends, and
    a window without sign-ups from the address forgets its count.
    """
    key = f"signup:{client[:64]}"
    wait = _wait(session, (key,), now=now)
    if wait is not None:
        return wait
    window = timedelta(seconds=limits.signup_window_seconds)
    if _count(session, key=key, now=now, forget_after=window) <= limits.signups_per_client:
        return None
    session.execute(update(LoginFailures).where(LoginFailures.key == key).values(locked_until=now + window))
    return limits.signup_window_seconds


def record_failure(session: Session, *, keys: Keys, limits: Limits, now: datetime) -> None:
    for key, threshold in ((keys.account, limits.per_account), (keys.client, limits.per_client)):
        failures = _count(session, key=key, now=now)
        seconds = limits.lock_for(failures, threshold)
        if seconds:
            locked_until = now + timedelta(seconds=seconds)
            session.execute(update(LoginFailures).where(LoginFailures.key == key).values(locked_until=locked_until))


def forget(session: Session, *, key: str) -> None:
    session.execute(delete(LoginFailures).where(LoginFailures.key == key))


def _count(session: Session, *, key: str, now: datetime, forget_after: timedelta = FORGET_AFTER) -> int:
    """Add one failure atomically (an upsert: concurrent workers cannot lose a count)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stale = LoginFailures.last_failure_at < now - forget_after
    statement = (
        insert(LoginFailures)
        .values(key=key, failures=1, last_failure_at=now)
        .on_conflict_do_update(
            index_elements=[LoginFailures.key],
            set_={"failures": case((stale, 1), else_=LoginFailures.failures + 1), "last_failure_at": now},
        )
        .returning(LoginFailures.failures)
    )
    return int(session.execute(statement).scalar_one())
