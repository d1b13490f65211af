"""The account service: password checks with their lockout bookkeeping, token issue and
revocation.

The endpoints of `api/auth.py` and `api/users.py` call it with their `Call`; its database work
runs in that request's unit of work (`Call.read` / `Call.write`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import lockout, refresh, security
from .auth import Principal, load_caller
from .errors import Forbidden, InvalidCredentials, InvalidGrant, TooManyRequests
from .models import User, utcnow
from .operations import Call
from .schemas import Token, canonical_email


@dataclass(frozen=True, slots=True)
class Credentials:
    user_id: int
    hashed_password: str


def find_credentials(session: Session, *, email: str) -> Credentials | None:
    row = session.execute(select(User.id, User.hashed_password).where(User.email == canonical_email(email))).first()
    return None if row is None else Credentials(row.id, row.hashed_password)


async def check_password(call: Call, *, email: str, password: str) -> Credentials | None:
    """The account's credentials if the password matches; every failure is counted, and a
    locked account or client gets a 429 before any bcrypt work."""
    keys = lockout.Keys.of(email=email, client=call.client_address)
    wait, credentials = await call.read(_login_state, email=email, keys=keys, now=utcnow())
    metrics = call.services.metrics
    if wait is not None:
        if metrics is not None:
            metrics.lockouts.inc()
        raise TooManyRequests(wait)
    hashed = credentials.hashed_password if credentials else None
    if not await call.services.passwords.verify(password, hashed) or credentials is None:
        await call.write(lockout.record_failure, keys=keys, limits=call.services.limits, now=utcnow())
        if metrics is not None:
            metrics.login_failures.inc()
        return None
    return credentials


def _login_state(
    session: Session, *, email: str, keys: lockout.Keys, now: datetime
) -> tuple[int | None, Credentials | None]:
    return lockout.retry_after(session, keys=keys, now=now), find_credentials(session, email=email)


async def reserve_sign_up(call: Call) -> None:
    """Counts a sign-up from the caller's address before its bcrypt work: a 429 past
    SIGNUP_MAX_PER_CLIENT within SIGNUP_WINDOW_SECONDS."""
    wait = await call.write(
        lockout.reserve_sign_up, client=call.client_address, limits=call.services.limits, now=utcnow()
    )
    if wait is not None:
        raise TooManyRequests(wait, "Too many sign-ups from this address; try again later")


async def log_in(call: Call, *, email: str, password: str) -> Token:
    """The password grant: a new token pair, which starts a refresh-token family."""
    credentials = await check_password(call, email=email, password=password)
    if credentials is None:
        raise InvalidCredentials("Incorrect email or password")
    keys = lockout.Keys.of(email=email, client=call.client_address)
    upgrade = None
    if security.needs_rehash(credentials.hashed_password):  # a plain bcrypt hash: pre-hash it now
        upgrade = (credentials.hashed_password, await call.services.passwords.hash(password))
    grant = await call.write(
        _login, user_id=credentials.user_id, account_key=keys.account, upgrade=upgrade, **_lifetime(call)
    )
    return _tokens(call, grant)


def _login(
    session: Session,
    *,
    user_id: int,
    account_key: str,
    upgrade: tuple[str, str] | None,
    lifetime: timedelta,
    now: datetime,
) -> refresh.Grant:
    # Locked as every write locks its caller (auth._PRINCIPAL_KEPT): a deletion waits for the token.
    user = session.get(User, user_id, with_for_update={"key_share": True})
    if user is None:  # deleted while its password was being checked
        raise InvalidCredentials("Incorrect email or password")
    if upgrade is not None and user.hashed_password == upgrade[0]:  # unless changed meanwhile
        user.hashed_password = upgrade[1]
    lockout.forget(session, key=account_key)
    return refresh.start_family(session, user=user, lifetime=lifetime, now=now)


async def refresh_tokens(call: Call, *, refresh_token: str) -> Token:
    """The refresh grant: the next pair of the family, or a 400 for a token that is not good."""
    grant = await call.write(refresh.rotate, token=refresh_token, **_lifetime(call))
    if grant is None:
        raise InvalidGrant()
    return _tokens(call, grant)


def _lifetime(call: Call) -> dict[str, timedelta | datetime]:
    return {"lifetime": timedelta(days=call.services.settings.refresh_token_expire_days), "now": utcnow()}


def _tokens(call: Call, grant: refresh.Grant) -> Token:
    tokens = call.services.tokens
    access = tokens.issue(grant.user_id, version=grant.token_version)
    return Token(access_token=access, expires_in=tokens.ttl_seconds, refresh_token=grant.refresh_token)


async def log_out(call: Call, *, refresh_token: str) -> None:
    await call.write_as_user(refresh.revoke_family, token=refresh_token, now=utcnow())


async def change_password(call: Call, *, current_password: str, new_password: str) -> None:
    """Checked like a login (wrong ones count towards the limits); ends every session."""
    email = await call.read_as_user(_email)
    if await check_password(call, email=email, password=current_password) is None:
        raise Forbidden("Current password is incorrect")
    hashed = await call.services.passwords.hash(new_password)
    await call.write_as_user(_set_password, hashed_password=hashed)


def _email(session: Session, *, user: Principal) -> str:
    return user.email


def _set_password(session: Session, *, user: Principal, hashed_password: str) -> None:
    """A new password ends every session: access tokens by version, refresh tokens revoked."""
    now = utcnow()
    me = load_caller(session, user)
    me.hashed_password = hashed_password
    me.token_version += 1
    me.updated_at = now
    refresh.revoke_all(session, user_id=user.id, now=now)
