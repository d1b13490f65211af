"""Brute-force limits on password checks, counted in the database so that every worker and
every host shares them.

An attempt is counted before its password is checked (a reservation), per account and per
client address; a right password gives the reservation back. Past a threshold the key is
locked for a window that doubles with every further failure, up to a ceiling: a lock always
ends. A quiet hour forgets a count.

Smart lockout: the account's count is kept apart for each address the user has logged in
from before ("familiar"), so strangers guessing from elsewhere lock only the strangers, never
the owner at home. The strangers' count is per account (the email tried, whether or not it
exists, so a 429 does not reveal which accounts exist), which caps guessing spread over
many addresses.

Sign-ups are counted per client address the same way (`signup:<address>`), before their
bcrypt work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .limits import CLIENT_MAX, EMAIL_MAX
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
    """The two counts an attempt is held to: the account's (the strangers', or a familiar
    address's own) and the client address's."""

    account: str
    client: str

    @classmethod
    def of(cls, *, email: str, client: str, familiar: bool = False) -> Keys:
        account = f"account:{canonical_email(email.strip())[:EMAIL_MAX]}"
        client_key = f"client:{client[:CLIENT_MAX]}"
        return cls(f"{account} {client_key}" if familiar else account, client_key)

    def thresholds(self, limits: Limits) -> list[tuple[str, int]]:
        # Always in key order: two transactions lock the same rows in the same order, so
        # concurrent attempts on PostgreSQL wait for each other instead of deadlocking.
        return sorted(((self.account, limits.per_account), (self.client, limits.per_client)))


def reserve(session: Session, *, keys: Keys, limits: Limits, now: datetime) -> int | None:
    """Count this attempt as a failure before its password is checked, and lock a key that
    reaches its threshold now; None, or the seconds to wait when a key is locked.

    On a lock the caller must roll back, so that a refused attempt counts for nothing.
    Race: concurrent attempts all reading "not locked" before any recorded its failure,
    then all checked (tests/test_accounts.py, concurrent wrong passwords): the count and
    the lock change in one conditional upsert per key, atomically, before bcrypt.
    """
    for key, threshold in keys.thresholds(limits):
        failures = _reserve(session, key=key, now=now)
        if failures is None:
            return retry_after(session, keys=keys, now=now) or 1
        seconds = limits.lock_for(failures, threshold)
        if seconds:
            locked_until = now + timedelta(seconds=seconds)
            session.execute(update(LoginFailures).where(LoginFailures.key == key).values(locked_until=locked_until))
    return None


def accept(session: Session, *, keys: Keys, limits: Limits) -> None:
    """A right password: forget the account's count (for this kind of address: a familiar
    address's success leaves the strangers' count alone) and give the client's reservation
    back, with the lock it may have taken."""
    session.execute(delete(LoginFailures).where(LoginFailures.key == keys.account))
    failures = LoginFailures.failures - 1
    session.execute(
        update(LoginFailures)
        .where(LoginFailures.key == keys.client)
        .values(
            failures=failures, locked_until=case((failures < limits.per_client, None), else_=LoginFailures.locked_until)
        )
    )


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
    key = f"signup:{client[:CLIENT_MAX]}"
    window = timedelta(seconds=limits.signup_window_seconds)
    signups = _reserve(session, key=key, now=now, forget_after=window)
    if signups is None:
        return _wait(session, (key,), now=now) or 1
    if signups <= limits.signups_per_client:
        return None
    session.execute(update(LoginFailures).where(LoginFailures.key == key).values(locked_until=now + window))
    return limits.signup_window_seconds


def _reserve(session: Session, *, key: str, now: datetime, forget_after: timedelta = FORGET_AFTER) -> int | None:
    """Add one failure unless the key is locked: the new count, or None when locked."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stale = LoginFailures.last_failure_at < now - forget_after
    statement = (
        insert(LoginFailures)
        .values(key=key, failures=1, last_failure_at=now)
        .on_conflict_do_update(
            index_elements=[LoginFailures.key],
            set_={"failures": case((stale, 1), else_=LoginFailures.failures + 1), "last_failure_at": now},
            where=or_(LoginFailures.locked_until.is_(None), LoginFailures.locked_until <= now),
        )
        .returning(LoginFailures.failures)
    )
    failures = session.execute(statement).scalar_one_or_none()
    return None if failures is None else int(failures)
