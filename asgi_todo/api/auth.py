"""Tokens: the OAuth2 password grant (RFC 6749 section 4.3), refresh (section 6), logout;
and the caller's own account."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .. import accounts
from ..auth import Principal
from ..errors import BadRequest
from ..operations import Auth, Call, Operation, Reply
from ..schemas import Logout, OtherGrant, PasswordGrant, RefreshGrant, Token, TokenForm, UserRead

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def token_endpoint(call: Call[None, None, PasswordGrant | RefreshGrant | OtherGrant]) -> Reply:
    form = call.body
    if isinstance(form, PasswordGrant):
        token = await accounts.log_in(call, email=form.username, password=form.password)
    elif isinstance(form, RefreshGrant):
        token = await accounts.refresh_tokens(call, refresh_token=form.refresh_token)
    else:
        raise BadRequest("unsupported_grant_type: grant_type must be password or refresh_token")
    return Reply(token, headers=NO_STORE)


async def logout_endpoint(call: Call[None, None, Logout | None]) -> None:
    body = call.body
    await accounts.log_out(call, refresh_token=body.refresh_token if body is not None else None)


def _me(session: Session, user: Principal, /) -> Principal:
    return user


async def me_endpoint(call: Call) -> Principal:
    return await call.read_as_user(_me)


OPERATIONS: list[Operation] = [
    Operation(
        method="POST",
        path="/auth/token",
        name="login",
        tag="auth",
        summary="Get an access token (OAuth2 password grant, or refresh)",
        description=(
            "Form fields of RFC 6749: `grant_type=password` (the default) with `username` (the email) and "
            "`password`, or `grant_type=refresh_token` with `refresh_token`; any other `grant_type` is a 400. "
            "Refresh tokens are single use: presenting a spent one again is a 400 and ends its login at once, "
            "so every access and refresh token of that login stops working (401, 400), not when they expire. "
            "Repeated failed passwords get a 429 with `Retry-After`."
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
        summary="End a login",
        description=(
            "Without a body: ends the login of the access token sent. With `refresh_token`: ends the login "
            "that token belongs to, if it is yours. Every access and refresh token of that login stops "
            "working at once; your other logins go on. A refresh token that is unknown or someone else's "
            "ends nothing and is still a 204, so the answer never tells whose a token is. A missing or "
            "invalid access token is a 401; a body that is too large, not JSON or malformed a 413, 415 or 422."
        ),
        handler=logout_endpoint,
        status=204,
        auth=Auth.USER,
        body=Logout,
        body_required=False,
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
