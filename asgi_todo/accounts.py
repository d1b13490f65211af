"""The account service: password checks with their lockout bookkeeping, token issue and
revocation.

The endpoints of `api/auth.py` and `api/users.py` call it with their `Call`; its database work
runs in that request's unit of work (`Call.read` / `Call.write`).

A password check is two units of work around bcrypt: the attempt is counted first, so no
more attempts than the limits allow reach bcrypt however many arrive at once; the success is
recorded after, in the transaction of what the password was checked for (a login, a new
password), which also makes sure that the password verified is still the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import lockout, refresh, security
from .auth import Principal
from .errors import Forbidden, InvalidCredentials, InvalidGrant, TooManyRequests
from .models import User, utcnow
from .operations import AnyCall
from .schemas import Token, canonical_email


@dataclass(frozen=True, slots=True)
class Credentials:
    user_id: int
    hashed_password: str
    token_version: int  # bumped by every password change


@dataclass(frozen=True, slots=True)
class Attempt:
    """A password check under way: the counts it has reserved, and the account it is for."""

    keys: lockout.Keys
    credentials: Credentials | None


async def check_password(call: AnyCall, *, email: str, password: str) -> Attempt | None:
    """The attempt if the password matches, else None; a locked account or client gets a
    429 before any bcrypt work.

    The attempt is counted as a failure before its password is checked; the caller records
    a success with `_accept`, in the transaction that uses it. A failure needs no more work.
    """
    metrics = call.services.metrics
    try:
        attempt = await call.write(
            _reserve, email=email, client=call.client_address, limits=call.services.limits, now=utcnow()
        )
    except TooManyRequests:
        if metrics is not None:
            metrics.lockouts.inc()
        raise
    credentials = attempt.credentials
    hashed = credentials.hashed_password if credentials else None
    if not await call.services.passwords.verify(password, hashed) or credentials is None:
        if metrics is not None:
            metrics.login_failures.inc()
        return None
    return attempt


def _reserve(session: Session, *, email: str, client: str, limits: lockout.Limits, now: datetime) -> Attempt:
    # One query whether or not the account exists, so that the time taken does not tell.
    familiar = refresh.is_familiar(client).label("familiar")
    row = session.execute(
        select(User.id, User.hashed_password, User.token_version, familiar).where(User.email == canonical_email(email))
    ).first()
    keys = lockout.Keys.of(email=email, client=client, familiar=row is not None and bool(row.familiar))
    wait = lockout.reserve(session, keys=keys, limits=limits, now=now)
    if wait is not None:
        raise TooManyRequests(wait)  # and the reservation is rolled back: a refused attempt counts for nothing
    return Attempt(keys, None if row is None else Credentials(row.id, row.hashed_password, row.token_version))


def _accept(session: Session, *, attempt: Attempt, limits: lockout.Limits) -> bool:
    """Record a right password, and lock the user's row for the rest of the transaction;
    False when the password checked is no longer the user's.

    Race: a password change (or a deletion) committing while this password was being
    checked (tests/test_accounts.py, a login racing a password change). The row lock waits
    for the change, and the change for us; a version that has moved means the password
    verified is an old one. The caller then raises: the rollback keeps the attempt counted.
    """
    assert attempt.credentials is not None
    # The user's row first, then the counts: every writer of this user (auth's kept caller row,
    # a password change) takes them in that order, so two of them cannot deadlock on PostgreSQL.
    version = refresh.lock_user(session, user_id=attempt.credentials.user_id)
    lockout.accept(session, keys=attempt.keys, limits=limits)
    return version == attempt.credentials.token_version


async def reserve_sign_up(call: AnyCall) -> None:
    """Counts a sign-up from the caller's address before its bcrypt work: a 429 past
    SIGNUP_MAX_PER_CLIENT within SIGNUP_WINDOW_SECONDS."""
    wait = await call.write(
        lockout.reserve_sign_up, client=call.client_address, limits=call.services.limits, now=utcnow()
    )
    if wait is not None:
        raise TooManyRequests(wait, "Too many sign-ups from this address; try again later")


async def log_in(call: AnyCall, *, email: str, password: str) -> Token:
    """The password grant: a new login, and its first token pair."""
    attempt = await check_password(call, email=email, password=password)
    if attempt is None:
        raise InvalidCredentials("Incorrect email or password")
    assert attempt.credentials is not None
    upgrade = None
    passwords = call.services.passwords
    if security.needs_rehash(attempt.credentials.hashed_password, rounds=passwords.rounds):
        upgrade = await passwords.hash(password)  # plain bcrypt, or another cost: at BCRYPT_ROUNDS now
    grant = await call.write(
        _login,
        attempt=attempt,
        client=call.client_address,
        limits=call.services.limits,
        upgrade=upgrade,
        lifetime=_lifetime(call),
        now=utcnow(),
    )
    return _tokens(call, grant)


def _login(
    session: Session,
    *,
    attempt: Attempt,
    client: str,
    limits: lockout.Limits,
    upgrade: str | None,
    lifetime: timedelta,
    now: datetime,
) -> refresh.Grant:
    assert attempt.credentials is not None
    if not _accept(session, attempt=attempt, limits=limits):
        raise InvalidCredentials("Incorrect email or password")
    user_id, version = attempt.credentials.user_id, attempt.credentials.token_version
    if upgrade is not None:  # the hash verified is still the user's: _accept checked the version under the row lock
        session.execute(
            update(User)
            .where(User.id == user_id, User.hashed_password == attempt.credentials.hashed_password)
            .values(hashed_password=upgrade)
        )
    return refresh.start(session, user_id=user_id, token_version=version, client=client, lifetime=lifetime, now=now)


async def refresh_tokens(call: AnyCall, *, refresh_token: str) -> Token:
    """The refresh grant: the next pair of the login, or a 400 for a token that is not good."""
    grant = await call.write(refresh.rotate, token=refresh_token, lifetime=_lifetime(call), now=utcnow())
    if isinstance(grant, refresh.Reused) and call.services.metrics is not None:
        call.services.metrics.refresh_reuse.inc()
    if not isinstance(grant, refresh.Grant):
        raise InvalidGrant()
    return _tokens(call, grant)


def _lifetime(call: AnyCall) -> timedelta:
    """A new refresh token's."""
    return timedelta(days=call.services.settings.refresh_token_expire_days)


def _tokens(call: AnyCall, grant: refresh.Grant) -> Token:
    tokens = call.services.tokens
    access = tokens.issue(grant.user_id, version=grant.token_version, login=grant.login)
    return Token(access_token=access, expires_in=tokens.ttl_seconds, refresh_token=grant.refresh_token)


async def log_out(call: AnyCall, *, refresh_token: str | None) -> None:
    """Ends a login of the caller: the one its access token names, or the one of the
    refresh token given (anyone else's is left alone). Its access tokens stop working at
    once: every request reads the login (auth.current_user)."""
    assert call.claims is not None
    await call.write_as_user(_log_out, login=call.claims.login, refresh_token=refresh_token, now=utcnow())


def _log_out(
    session: Session, user: Principal, /, *, login: str | None, refresh_token: str | None, now: datetime
) -> None:
    if refresh_token is not None:
        login = refresh.login_of(session, user_id=user.id, token=refresh_token)
    if login is not None:
        refresh.revoke(session, user_id=user.id, login=login, now=now)


async def change_password(call: AnyCall, *, current_password: str, new_password: str) -> None:
    """Checked like a login (wrong ones count towards the limits); ends every session."""
    email = await call.read_as_user(_email)
    attempt = await check_password(call, email=email, password=current_password)
    if attempt is None:
        raise Forbidden("Current password is incorrect")
    hashed = await call.services.passwords.hash(new_password)
    await call.write_as_user(_set_password, attempt=attempt, limits=call.services.limits, hashed_password=hashed)


def _email(session: Session, user: Principal, /) -> str:
    return user.email


def _set_password(
    session: Session, user: Principal, /, *, attempt: Attempt, limits: lockout.Limits, hashed_password: str
) -> None:
    """A new password ends every session: access tokens by version, logins revoked.

    The user's row is locked (by `_accept`) before the logins are revoked, so a login whose
    password check ran meanwhile either committed first, and is revoked here, or waits and
    then finds the version moved.
    """
    if not _accept(session, attempt=attempt, limits=limits):
        raise InvalidCredentials()  # the password changed meanwhile: this session has ended
    now = utcnow()
    session.execute(
        update(User)
        .where(User.id == user.id)
        .values(hashed_password=hashed_password, token_version=User.token_version + 1, updated_at=now)
    )
    refresh.revoke_all(session, user_id=user.id, now=now)


def set_superuser(session: Session, *, email: str, superuser: bool) -> bool:
    """Name or unname a superuser (`asgi-todo users promote|demote`); False: no such email.
    Roles are never inferred: a database upgraded from the original has no superuser. The email
    is looked up in the canonical form sign-up stores (NFKC, case folded)."""
    statement = update(User).where(User.email == canonical_email(email.strip())).values(is_superuser=superuser)
    return session.execute(statement.returning(User.id)).first() is not None
