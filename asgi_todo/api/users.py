"""Users: sign-up, your own account (names, password, deletion), the superuser's list, one
user with their todos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, Row, Select, bindparam, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from .. import accounts
from ..auth import USER_COLUMNS, Principal, load_caller
from ..errors import Conflict, NotFound
from ..limits import PASSWORD_MAX, PASSWORD_MIN
from ..models import User, utcnow
from ..operations import Auth, Call, Operation, Reply
from ..schemas import ById, Page, PasswordChange, UserCreate, UserRead, UserReadNested, UserUpdate

_EMAIL_TAKEN = "Email already registered."


def create_user(session: Session, *, data: UserCreate, hashed_password: str) -> User:
    if session.scalar(select(User.id).where(User.email == data.email)) is not None:
        raise Conflict(_EMAIL_TAKEN)
    now = utcnow()
    user = User(
        email=data.email,
        hashed_password=hashed_password,
        fname=data.fname,
        lname=data.lname,
        is_superuser=False,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # a concurrent sign-up with the same email won the race
        raise Conflict(_EMAIL_TAKEN) from None
    return user


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
    session: Session, *, user: Principal, after_id: int | None = None, offset: int = 0, limit: int, count: bool = False
) -> tuple[Sequence[Row[Any]], bool, int | None]:
    """A page of users, whether more follow, and, when asked, how many there are."""
    connection = session.connection()
    rows = connection.execute(_PAGE, {"after_id": after_id or 0, "offset": offset, "limit": limit + 1}).all()
    total = connection.execute(_COUNT).scalar_one() if count else None
    return rows[:limit], len(rows) > limit, total


def find_user(session: Session, *, user: Principal, user_id: int) -> User:
    """Yourself, or anyone for a superuser; anyone else is a 404."""
    if user_id != user.id and not user.is_superuser:
        raise NotFound("User not found")
    found = session.get(User, user_id, options=[selectinload(User.todos)])
    if found is None:
        raise NotFound("User not found")
    return found


def update_me(session: Session, *, user: Principal, changes: dict[str, str]) -> User:
    me = load_caller(session, user)
    for name, value in changes.items():
        setattr(me, name, value)
    me.updated_at = utcnow()
    session.flush()
    return me


def delete_me(session: Session, *, user: Principal) -> None:
    # Todos and logins, with their refresh tokens, go with the row (ON DELETE CASCADE).
    session.execute(delete(User).where(User.id == user.id))


def _signed_up(session: Session, *, data: UserCreate, hashed_password: str, prefix: str) -> Reply:
    # The Reply is made in the write's transaction: an Idempotency-Key stores it there.
    user = create_user(session, data=data, hashed_password=hashed_password)
    return Reply(user, headers={"Location": f"{prefix}/users/{user.id}"})


async def signup_endpoint(call: Call[None, None, UserCreate]) -> Reply:
    data = call.body
    await accounts.reserve_sign_up(call)
    hashed = await call.services.passwords.hash(data.password)
    return await call.write(_signed_up, data=data, hashed_password=hashed, prefix=call.services.settings.api_prefix)


async def update_me_endpoint(call: Call[None, None, UserUpdate]) -> User:
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
    return Reply(rows, headers=call.page_headers(rows, more=more, limit=page.limit, total=total))


async def get_endpoint(call: Call[ById]) -> User:
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
