"""The OAuth2 password grant (RFC 6749 section 4.3) and the caller's own account."""

from __future__ import annotations

from sqlalchemy.orm import Session

from ..auth import find_credentials
from ..errors import BadRequest, InvalidCredentials
from ..models import User
from ..operations import Auth, Call, Operation, Reply
from ..schemas import Token, TokenForm, UserRead

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def token_endpoint(call: Call) -> Reply:
    form: TokenForm = call.body
    if form.grant_type not in (None, "", "password"):
        raise BadRequest("unsupported_grant_type: only grant_type=password is supported")
    credentials = await call.read(find_credentials, email=form.username)
    hashed = credentials.hashed_password if credentials else None
    if not await call.services.passwords.verify(form.password, hashed) or credentials is None:
        raise InvalidCredentials("Incorrect email or password")
    tokens = call.services.tokens
    token = Token(access_token=tokens.issue(credentials.user_id), expires_in=tokens.ttl_seconds)
    return Reply(token, headers=_NO_STORE)


def _me(session: Session, *, user: User) -> User:
    return user


async def me_endpoint(call: Call) -> User:
    return await call.read(_me)


OPERATIONS = [
    Operation(
        method="POST",
        path="/auth/token",
        name="login",
        tag="auth",
        summary="Get an access token (OAuth2 password grant)",
        description="Form fields of RFC 6749 section 4.3: `username` is the email.",
        handler=token_endpoint,
        form=TokenForm,
        response=Token,
        errors=(400, 401, 413, 415, 422),
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
