"""Tokens: the OAuth2 password grant (RFC 6749 section 4.3), refresh (section 6), logout;
and the caller's own account."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from .. import lockout, refresh
from ..auth import Credentials, Principal, find_credentials
from ..errors import BadRequest, InvalidCredentials, InvalidGrant, TooManyRequests, ValidationFailed, validation_issue
from ..models import User, utcnow
from ..operations import Auth, Call, Operation, Reply
from ..schemas import Logout, Token, TokenForm, UserRead

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def token_endpoint(call: Call) -> Reply:
    form: TokenForm = call.body
    grant_type = form.grant_type or "password"
    if grant_type == "password":
        return await _password_grant(call, form)
    if grant_type == "refresh_token":
        return await _refresh_grant(call, form)
    raise BadRequest("unsupported_grant_type: grant_type must be password or refresh_token")


def _require(form: TokenForm, *names: str) -> None:
    missing = [name for name in names if getattr(form, name) is None]
    if missing:
        raise ValidationFailed([validation_issue("missing", ["body", name], "Field required") for name in missing])


async def check_password(call: Call, *, email: str, password: str) -> Credentials | None:
    """The account's credentials if the password matches; every failure is counted, and a
    locked account or client gets a 429 before any bcrypt work.

    Also used by operations that need a user: the data functions below take the `user`
    that Call.read/write then pass, and ignore it.
    """
    keys = lockout.Keys.of(email=email, client=call.client_address)
    wait, credentials = await call.read(_login_state, email=email, keys=keys, now=utcnow())
    if wait is not None:
        raise TooManyRequests(wait)
    hashed = credentials.hashed_password if credentials else None
    if not await call.services.passwords.verify(password, hashed) or credentials is None:
        await call.write(_count_failure, keys=keys, limits=call.services.limits, now=utcnow())
        return None
    return credentials


def _login_state(
    session: Session, *, email: str, keys: lockout.Keys, now: datetime, user: Principal | None = None
) -> tuple[int | None, Credentials | None]:
    return lockout.retry_after(session, keys=keys, now=now), find_credentials(session, email=email)


def _count_failure(
    session: Session, *, keys: lockout.Keys, limits: lockout.Limits, now: datetime, user: Principal | None = None
) -> None:
    lockout.record_failure(session, keys=keys, limits=limits, now=now)


async def _password_grant(call: Call, form: TokenForm) -> Reply:
    _require(form, "username", "password")
    assert form.username is not None
    assert form.password is not None
    credentials = await check_password(call, email=form.username, password=form.password)
    if credentials is None:
        raise InvalidCredentials("Incorrect email or password")
    keys = lockout.Keys.of(email=form.username, client=call.client_address)
    grant = await call.write(_login, user_id=credentials.user_id, account_key=keys.account, **_lifetime(call))
    return _token_reply(call, grant)


def _login(session: Session, *, user_id: int, account_key: str, lifetime: timedelta, now: datetime) -> refresh.Grant:
    user = session.get(User, user_id)
    if user is None:  # deleted while its password was being checked
        raise InvalidCredentials("Incorrect email or password")
    lockout.forget(session, key=account_key)
    return refresh.start_family(session, user=user, lifetime=lifetime, now=now)


async def _refresh_grant(call: Call, form: TokenForm) -> Reply:
    _require(form, "refresh_token")
    assert form.refresh_token is not None
    grant = await call.write(refresh.rotate, token=form.refresh_token, **_lifetime(call))
    if grant is None:
        raise InvalidGrant()
    return _token_reply(call, grant)


def _lifetime(call: Call) -> dict[str, Any]:
    return {"lifetime": timedelta(days=call.services.settings.refresh_token_expire_days), "now": utcnow()}


def _token_reply(call: Call, grant: refresh.Grant) -> Reply:
    tokens = call.services.tokens
    access = tokens.issue(grant.user_id, version=grant.token_version)
    token = Token(access_token=access, expires_in=tokens.ttl_seconds, refresh_token=grant.refresh_token)
    return Reply(token, headers=NO_STORE)


async def logout_endpoint(call: Call) -> None:
    body: Logout = call.body
    await call.write(refresh.revoke_family, token=body.refresh_token, now=utcnow())


def _me(session: Session, *, user: Principal) -> Principal:
    return user


async def me_endpoint(call: Call) -> Principal:
    return await call.read(_me)


OPERATIONS = [
    Operation(
        method="POST",
        path="/auth/token",
        name="login",
        tag="auth",
        summary="Get an access token (OAuth2 password grant, or refresh)",
        description=(
            "Form fields of RFC 6749: `grant_type=password` (the default) with `username` (the email) and "
            "`password`, or `grant_type=refresh_token` with `refresh_token`. Refresh tokens are single use; "
            "presenting a used one revokes every token of that login. Repeated failures get a 429 with "
            "`Retry-After`."
        ),
        handler=token_endpoint,
        form=TokenForm,
        response=Token,
        errors=(400, 401, 413, 415, 422, 429),
        headers={"Cache-Control": "no-store"},
    ),
    Operation(
        method="POST",
        path="/auth/logout",
        name="logout",
        tag="auth",
        summary="Revoke a refresh token",
        description="Revokes the caller's refresh token and every token of the same login. Always a 204.",
        handler=logout_endpoint,
        status=204,
        auth=Auth.USER,
        body=Logout,
        errors=(401, 413, 415, 422),
    ),
    Operation(
        method="GET",
        path="/auth/me",
        name="me",
        tag="auth",
        summary="The current user",
        handler=me_endpoint,
        auth=Auth.USER,
        response=UserRead,
        errors=(401,),
    ),
]
