"""Brute-force limits on password checks, counted in the database so that every worker and
every host shares them.

Failures are counted per account (the email tried, whether or not it exists, so a 429 does
not reveal which accounts exist) and per client address. Past a threshold the key is locked
for a window that doubles with every further failure, up to a ceiling: a lock always ends,
so an attacker cannot shut a victim out for good. A quiet hour forgets the count, and a
successful login forgets the account's count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import LoginFailures

FORGET_AFTER = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Limits:
    per_account: int
    per_client: int
    lock_seconds: int
    lock_max_seconds: int

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
        return cls(f"account:{email.strip().lower()[:320]}", f"client:{client[:64]}")


def retry_after(session: Session, *, keys: Keys, now: datetime) -> int | None:
    """Seconds until the later of the two locks ends, or None when neither is locked."""
    until = session.scalar(
        select(LoginFailures.locked_until)
        .where(LoginFailures.key.in_((keys.account, keys.client)), LoginFailures.locked_until > now)
        .order_by(LoginFailures.locked_until.desc())
        .limit(1)
    )
    return None if until is None else max(1, math.ceil((until - now).total_seconds()))


def record_failure(session: Session, *, keys: Keys, limits: Limits, now: datetime) -> None:
    for key, threshold in ((keys.account, limits.per_account), (keys.client, limits.per_client)):
        failures = _count(session, key=key, now=now)
        seconds = limits.lock_for(failures, threshold)
        if seconds:
            locked_until = now + timedelta(seconds=seconds)
            session.execute(update(LoginFailures).where(LoginFailures.key == key).values(locked_until=locked_until))


def forget(session: Session, *, key: str) -> None:
    session.execute(delete(LoginFailures).where(LoginFailures.key == key))


def _count(session: Session, *, key: str, now: datetime) -> int:
    """Add one failure atomically (an upsert: concurrent workers cannot lose a count)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stale = LoginFailures.last_failure_at < now - FORGET_AFTER
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
