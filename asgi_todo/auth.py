"""The current user, and password checks kept off the event loop."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from pydantic import ConfigDict
from sqlalchemy import Row, Select, bindparam, select
from sqlalchemy.orm import Session

from . import security
from .errors import Forbidden, InvalidCredentials
from .models import Login, User
from .schemas import UserRead
from .threads import Threads


class Principal(UserRead):
    """The caller, as the request's data functions see them: UserRead's fields, taken from
    it, and the token version (responses are typed UserRead, so it is never sent). Built from
    the row of a prepared Core select, not loaded as an ORM object (three times the cost);
    functions that change the user load it. Strict: the row's values already have the
    fields' types, and checking them so costs a third of converting them."""

    model_config = ConfigDict(frozen=True, strict=True)

    token_version: int


# What UserRead shows of a user, and what Principal holds, as columns.
USER_COLUMNS = tuple(getattr(User, name) for name in UserRead.model_fields)
_PRINCIPAL_FIELDS = tuple(Principal.model_fields)
_PRINCIPAL_COLUMNS = tuple(getattr(User, name) for name in _PRINCIPAL_FIELDS)
_PRINCIPAL: Select[Any] = select(*_PRINCIPAL_COLUMNS).where(User.id == bindparam("id"))
# A writer's caller is read with FOR NO KEY UPDATE (PostgreSQL; SQLite's writers hold the
# whole database): deleting the account waits until the write commits, so the write cannot
# insert a todo or a token for a user that is gone (ForeignKeyViolation) or update a deleted
# row (StaleDataError); a write that starts after the deletion finds no user, a 401. One
# account's writes run one at a time (a shared lock would deadlock two deletions of one
# account); other accounts' do not wait. tests/test_races.py repeats the race.
_PRINCIPAL_KEPT = _PRINCIPAL.with_for_update(key_share=True)


def find_principal(session: Session, user_id: int, *, keep: bool = False) -> Principal | None:
    """The user, or None; `keep`: the row cannot be deleted until this transaction ends."""
    row = session.connection().execute(_PRINCIPAL_KEPT if keep else _PRINCIPAL, {"id": user_id}).first()
    return None if row is None else _principal(row)


def _principal(row: Row[Any]) -> Principal:
    return Principal.model_validate(dict(zip(_PRINCIPAL_FIELDS, row, strict=True)))


# The caller: the user, if the login their token names is theirs and has not ended. One query,
# the read every request makes anyway, so a logout or a detected reuse ends the login's access
# tokens at once (tests/test_refresh.py, logout ends the session now).
_CALLER: Select[Any] = (
    select(*_PRINCIPAL_COLUMNS)
    .join(Login, Login.user_id == User.id)
    .where(User.id == bindparam("id"), Login.id == bindparam("login"), Login.revoked_at.is_(None))
)
# A writer's caller row is kept as _PRINCIPAL_KEPT keeps it (the account deletion race).
_CALLER_KEPT = _CALLER.with_for_update(key_share=True, of=User)


def current_user(
    session: Session, claims: security.Claims, *, superuser: bool = False, keep: bool = False
) -> Principal:
    """The token's user, who must still exist, in a login still open, and not have changed
    password since; a 403 when a superuser is needed. `keep` for a write: see _PRINCIPAL_KEPT."""
    row = None
    if claims.login is not None:
        statement = _CALLER_KEPT if keep else _CALLER
        row = session.connection().execute(statement, {"id": claims.user_id, "login": claims.login}).first()
    user = None if row is None else _principal(row)
    if user is None or user.token_version != claims.version:
        raise InvalidCredentials()
    if superuser and not user.is_superuser:
        raise Forbidden("The user doesn't have enough privileges")
    return user


class Passwords:
    """bcrypt in its own threads: a login never holds the event loop or the database threads.

    An unknown account is checked against a dummy hash of the same cost, so the answer
    takes the same time whether or not the email exists.
    """

    def __init__(self, *, rounds: int, threads: int | None = None) -> None:
        self.rounds = rounds
        self._threads = Threads(threads or os.cpu_count() or 2, name="asgi_todo-bcrypt")
        self._dummy = security.hash_password(security.new_secret_key()[:16], rounds=rounds)

    def queued(self) -> int:
        """Checks waiting for a bcrypt thread now."""
        return self._threads.queued()

    async def hash(self, password: str) -> str:
        return await self._threads.run(partial(security.hash_password, password, rounds=self.rounds))

    async def verify(self, password: str, hashed: str | None) -> bool:
        matched = await self._threads.run(partial(security.verify_password, password, hashed or self._dummy))
        return matched and hashed is not None

    def close(self) -> None:
        self._threads.close()
