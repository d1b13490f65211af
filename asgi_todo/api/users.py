"""Users: sign-up, the superuser's list, one user with their todos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from ..errors import Conflict, NotFound
from ..models import User, utcnow
from ..operations import Auth, Call, Operation, Reply
from ..schemas import ById, Page, UserCreate, UserRead, UserReadNested

_COLUMNS = (User.id, User.email, User.fname, User.lname, User.is_superuser, User.created_at, User.updated_at)
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


def list_users(session: Session, *, user: User, offset: int, limit: int) -> tuple[Sequence[Any], int]:
    total = session.scalar(select(func.count()).select_from(User)) or 0
    rows = session.execute(select(*_COLUMNS).order_by(User.id).offset(offset).limit(limit)).all()
    return rows, total


def find_user(session: Session, *, user: User, user_id: int) -> User:
    """Yourself, or anyone for a superuser; anyone else is a 404."""
    if user_id != user.id and not user.is_superuser:
        raise NotFound("User not found")
    found = session.get(User, user_id, options=[selectinload(User.todos)], populate_existing=True)
    if found is None:
        raise NotFound("User not found")
    return found


async def signup_endpoint(call: Call) -> Reply:
    data: UserCreate = call.body
    hashed = await call.services.passwords.hash(data.password)
    user = await call.write(create_user, data=data, hashed_password=hashed)
    return Reply(user, headers={"Location": f"{call.services.settings.api_prefix}/users/{user.id}"})


async def list_endpoint(call: Call) -> Reply:
    page: Page = call.query
    rows, total = await call.read(list_users, offset=page.offset, limit=page.limit)
    return Reply(rows, headers={"X-Total-Count": str(total)})


async def get_endpoint(call: Call) -> User:
    return await call.read(find_user, user_id=call.params.id)


OPERATIONS = [
    Operation(
        method="POST",
        path="/users/signup",
        name="signup",
        tag="users",
        summary="Sign up",
        description="Creates an ordinary (not super) user. The password is 8 to 72 bytes of UTF-8.",
        handler=signup_endpoint,
        status=201,
        body=UserCreate,
        response=UserRead,
        errors=(409, 413, 415, 422),
        headers={"Location": "The new user's URL."},
    ),
    Operation(
        method="GET",
        path="/users/",
        name="list_users",
        tag="users",
        summary="List users (superuser)",
        handler=list_endpoint,
        auth=Auth.SUPERUSER,
        query=Page,
        response=list[UserRead],
        errors=(401, 403, 422),
        headers={"X-Total-Count": "How many users there are."},
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
