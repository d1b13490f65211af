"""Users: sign-up, your own account (names, password, deletion), the superuser's list, one
user with their todos."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Executable, Integer, Row, Select, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import accounts
from ..auth import USER_COLUMNS, Principal
from ..errors import Conflict, InvalidCredentials, NotFound
from ..limits import PASSWORD_MAX, PASSWORD_MIN
from ..models import Todo, User, utcnow
from ..operations import Auth, Call, Operation, Reply
from ..schemas import ById, Page, PasswordChange, TodoRead, UserCreate, UserRead, UserReadNested, UserUpdate

_EMAIL_TAKEN = "Email already registered."

# Data functions: the session first (and the caller, for those run as one), keyword-only
# arguments, never a commit; prepared Core statements on the session's connection, rows
# straight to the response models, as in api/todos.py.

_EMAIL_USED = select(User.id).where(User.email == bindparam("email"))
_CREATE = (
    insert(User)
    .values(
        email=bindparam("email"),
        hashed_password=bindparam("hashed_password"),
        fname=bindparam("fname"),
        lname=bindparam("lname"),
        is_superuser=False,
        token_version=0,
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    .returning(*USER_COLUMNS)
)


def create_user(session: Session, *, data: UserCreate, hashed_password: str) -> Row[Any]:
    connection = session.connection()
    if connection.execute(_EMAIL_USED, {"email": data.email}).first() is not None:
        raise Conflict(_EMAIL_TAKEN)
    values = {"email": data.email, "fname": data.fname, "lname": data.lname, "now": utcnow()}
    try:
        return connection.execute(_CREATE, {**values, "hashed_password": hashed_password}).one()
    except IntegrityError:  # a concurrent sign-up with the same email won the race
        raise Conflict(_EMAIL_TAKEN) from None


# A page walks the primary key from the cursor and stops after limit + 1 rows; the count,
# only when asked, reads the smallest index (tests/test_query_plans.py).
_PAGE: Select[Any] = (
    select(*USER_COLUMNS)
    .where(User.id > bindparam("after_id"))
    .order_by(User.id)
    .limit(bindparam("limit", type_=Integer))
    .offset(bindparam("offset", type_=Integer))
)
_COUNT = select(func.count()).select_from(User)


def list_users(
    session: Session,
    user: Principal,
    /,
    *,
    after_id: int | None = None,
    offset: int = 0,
    limit: int,
    count: bool = False,
) -> tuple[Sequence[Row[Any]], bool, int | None]:
    """A page of users, whether more follow, and, when asked, how many there are."""
    connection = session.connection()
    rows = connection.execute(_PAGE, {"after_id": after_id or 0, "offset": offset, "limit": limit + 1}).all()
    total = connection.execute(_COUNT).scalar_one() if count else None
    return rows[:limit], len(rows) > limit, total


_USER = select(*USER_COLUMNS).where(User.id == bindparam("id"))
_TODOS = (
    select(*(getattr(Todo, name) for name in TodoRead.model_fields))
    .where(Todo.owner_id == bindparam("id"))
    .order_by(Todo.id)
)


def find_user(session: Session, user: Principal, /, *, user_id: int) -> dict[str, object]:
    """Yourself, or anyone for a superuser; anyone else is a 404. With their todos."""
    if user_id != user.id and not user.is_superuser:
        raise NotFound("User not found")
    connection = session.connection()
    found = connection.execute(_USER, {"id": user_id}).first()
    if found is None:
        raise NotFound("User not found")
    return {**found._mapping, "todos": connection.execute(_TODOS, {"id": user_id}).all()}


@cache
def _update_statement(fields: tuple[str, ...]) -> Executable:
    """The caller's names change, one statement per set of fields sent, built once."""
    changes: dict[str, Any] = {name: bindparam(f"new_{name}") for name in fields}
    return (
        update(User)
        .where(User.id == bindparam("caller_id"))
        .values(**changes, updated_at=bindparam("now"))
        .returning(*USER_COLUMNS)
    )


def update_me(session: Session, user: Principal, /, *, changes: dict[str, str]) -> Row[Any]:
    values = {f"new_{name}": value for name, value in changes.items()}
    statement = _update_statement(tuple(sorted(changes)))
    row = session.connection().execute(statement, {**values, "caller_id": user.id, "now": utcnow()}).first()
    if row is None:  # gone since the token was checked
        raise InvalidCredentials()
    return row


# Todos and logins, with their refresh tokens, go with the row (ON DELETE CASCADE).
_DELETE = delete(User).where(User.id == bindparam("id"))


def delete_me(session: Session, user: Principal, /) -> None:
    session.connection().execute(_DELETE, {"id": user.id})


def _signed_up(session: Session, *, data: UserCreate, hashed_password: str, prefix: str) -> Reply:
    # The Reply is made in the write's transaction: an Idempotency-Key stores it there.
    user = create_user(session, data=data, hashed_password=hashed_password)
    return Reply(user, headers={"Location": f"{prefix}/users/{user.id}"})


async def signup_endpoint(call: Call[None, None, UserCreate]) -> Reply:
    data = call.body
    await accounts.reserve_sign_up(call)
    hashed = await call.services.passwords.hash(data.password)
    return await call.write(_signed_up, data=data, hashed_password=hashed, prefix=call.services.settings.api_prefix)


async def update_me_endpoint(call: Call[None, None, UserUpdate]) -> Row[Any]:
    body = call.body
    return await call.write_as_user(update_me, changes=body.model_dump(include=body.model_fields_set))


async def password_endpoint(call: Call[None, None, PasswordChange]) -> None:
    body = call.body
    await accounts.change_password(call, current_password=body.current_password, new_password=body.new_password)


async def delete_me_endpoint(call: Call) -> None:
    await call.write_as_user(delete_me)


async def list_endpoint(call: Call[None, Page]) -> Reply:
    page = call.query
    rows, more, total = await call.read_as_user(
        list_users, after_id=page.after_id, offset=page.offset, limit=page.limit, count=page.count
    )
    after = rows[-1].id if more else None
    return Reply(rows, headers=call.page_headers(after=after, limit=page.limit, total=total))


async def get_endpoint(call: Call[ById]) -> dict[str, object]:
    return await call.read_as_user(find_user, user_id=call.params.id)


OPERATIONS: list[Operation] = [
    Operation(
        method="POST",
        path="/users/signup",
        name="signup",
        tag="users",
        summary="Sign up",
        description=(
            f"Creates an ordinary (not super) user. The password is {PASSWORD_MIN} to {PASSWORD_MAX} characters,"
            " without control characters. Sign-ups are limited per client address (429 with `Retry-After`)."
        ),
        handler=signup_endpoint,
        status=201,
        body=UserCreate,
        response=UserRead,
        errors=(409, 413, 415, 422, 429),
        headers={"Location": "The new user's URL."},
        idempotent=True,
    ),
    Operation(
        method="PATCH",
        path="/users/me",
        name="update_me",
        tag="users",
        summary="Change your names",
        description="Only the fields sent change.",
        handler=update_me_endpoint,
        auth=Auth.USER,
        body=UserUpdate,
        response=UserRead,
        errors=(401, 413, 415, 422),
    ),
    Operation(
        method="DELETE",
        path="/users/me",
        name="delete_me",
        tag="users",
        summary="Delete your account and your todos",
        description="Your tokens stop working at once.",
        handler=delete_me_endpoint,
        status=204,
        auth=Auth.USER,
        errors=(401,),
    ),
    Operation(
        method="POST",
        path="/users/me/password",
        name="change_password",
        tag="users",
        summary="Change your password",
        description=(
            "Needs the current password. Every access and refresh token issued before stops working: "
            "log in again. A wrong current password is a 403, and counts towards the login limits (429)."
        ),
        handler=password_endpoint,
        status=204,
        auth=Auth.USER,
        body=PasswordChange,
        errors=(401, 403, 413, 415, 422, 429),
    ),
    Operation(
        method="GET",
        path="/users/",
        name="list_users",
        tag="users",
        summary="List users (superuser)",
        description=(
            "Ordered by id. Page with `after_id` (follow `Link`), or with `offset`; `count=true` adds `X-Total-Count`."
        ),
        handler=list_endpoint,
        auth=Auth.SUPERUSER,
        query=Page,
        response=list[UserRead],
        errors=(401, 403, 422),
        headers={
            "Link": 'The next page, `<URL>; rel="next"` (RFC 8288), if any: after this page\'s last id.',
            "X-Total-Count": "With `count=true` only: how many users there are.",
        },
    ),
    Operation(
        method="GET",
        path="/users/{id}",
        name="get_user",
        tag="users",
        summary="Get a user with their todos",
        description="Yourself, or anyone for a superuser; anyone else is a 404.",
        handler=get_endpoint,
        auth=Auth.USER,
        params=ById,
        response=UserReadNested,
        errors=(401, 404, 422),
    ),
]
