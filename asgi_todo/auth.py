"""The current user, and password checks kept off the event loop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from . import security
from .errors import Forbidden, InvalidCredentials
from .models import Login, User
from .threads import Level, Threads


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the request's data functions see them: a plain row, not an ORM object
    (loading one costs three times as much). Functions that change the user load it."""

    id: int
    email: str
    fname: str
    lname: str
    is_superuser: bool
    created_at: datetime
    updated_at: datetime
    token_version: int


# What UserRead shows of a user.
USER_COLUMNS = (User.id, User.email, User.fname, User.lname, User.is_superuser, User.created_at, User.updated_at)
_PRINCIPAL = select(*USER_COLUMNS, User.token_version).where(User.id == bindparam("id"))


def find_principal(session: Session, user_id: int) -> Principal | None:
    row = session.connection().execute(_PRINCIPAL, {"id": user_id}).first()
    return None if row is None else Principal(*row)


# The caller: the user, if the login their token names is theirs and has not ended. One query,
# the read every request makes anyway, so a logout or a detected reuse ends the login's access
# tokens at once (tests/test_refresh.py, logout ends the session now).
_CALLER = (
    select(*USER_COLUMNS, User.token_version)
    .join(Login, Login.user_id == User.id)
    .where(User.id == bindparam("id"), Login.id == bindparam("login"), Login.revoked_at.is_(None))
)


def current_user(session: Session, claims: security.Claims, *, superuser: bool = False) -> Principal:
    """The token's user, who must still exist, in a login still open, and not have changed
    password since; a 403 when a superuser is needed."""
    row = None
    if claims.login is not None:
        row = session.connection().execute(_CALLER, {"id": claims.user_id, "login": claims.login}).first()
    user = None if row is None else Principal(*row)
    if user is None or user.token_version != claims.version:
        raise InvalidCredentials()
    if superuser and not user.is_superuser:
        raise Forbidden("The user doesn't have enough privileges")
    return user


def load_caller(session: Session, user: Principal) -> User:
    """The caller as an ORM object, to change it; gone since the token check is a 401."""
    me = session.get(User, user.id)
    if me is None:
        raise InvalidCredentials()
    return me


class Passwords:
    """bcrypt in its own threads: a login never holds the event loop or the database threads.

    An unknown account is checked against a dummy hash of the same cost, so the answer
    takes the same time whether or not the email exists.
    """

    def __init__(self, *, rounds: int, threads: int | None = None) -> None:
        self.rounds = rounds
        self._threads = Threads(threads or os.cpu_count() or 2, name="asgi_todo-bcrypt")
        self._dummy = security.hash_password(security.new_secret_key()[:16], rounds=rounds)

    def observe(self, queued: Level) -> None:
        """Keep `queued` at the checks waiting for a bcrypt thread (metrics)."""
        self._threads.observe(queued)

    async def hash(self, password: str) -> str:
        return await self._threads.run(partial(security.hash_password, password, rounds=self.rounds))

    async def verify(self, password: str, hashed: str | None) -> bool:
        matched = await self._threads.run(partial(security.verify_password, password, hashed or self._dummy))
        return matched and hashed is not None

    def close(self) -> None:
        self._threads.close()
