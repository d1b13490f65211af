"""Todos: the caller's own (a superuser's: everyone's), with full CRUD.

Each todo has an ETag (its id and version): `If-None-Match` on GET answers 304 when the
client's copy is current, and `If-Match` on PUT, PATCH and DELETE refuses with 412 a change
based on a stale copy, so two clients editing one todo cannot silently overwrite each other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any, NoReturn, TypeVar

from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    Row,
    Select,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from ..auth import Principal, find_principal
from ..errors import Forbidden, NotFound, PreconditionFailed, ValidationFailed, validation_issue
from ..limits import INT_MAX
from ..models import Todo, utcnow
from ..operations import Auth, Call, Operation, Reply
from ..schemas import ById, TodoCreate, TodoFilter, TodoPatch, TodoRead, TodoReadNested, TodoReplace

# What TodoRead shows of a todo, and its version (the ETag).
_COLUMNS = (*(getattr(Todo, name) for name in TodoRead.model_fields), Todo.version)
_LIST_HEADERS = {
    "Link": 'The next page, `<URL>; rel="next"` (RFC 8288), if any: the same query after this page\'s last id.',
    "X-Total-Count": "With `count=true` only: how many todos match, ignoring `offset`, `limit` and `after_id`.",
}
_ETAG = {"ETag": "The todo's version; send it back in If-Match (changes) or If-None-Match (GET)."}
_CREATED_HEADERS = {"Location": "The new todo's URL.", **_ETAG}
_IF_MATCH = {"If-Match": "Change only if the todo still has this ETag (else 412)."}
_IF_NONE_MATCH = {"If-None-Match": "Answer 304, with no body, if the todo still has this ETag."}
_Body = TypeVar("_Body")
# Our tags only: an id and a version, each a 32-bit integer of at most 10 digits. Anything
# else never matches; it must not reach int() (4300 digits at most) or the database (overflow).
_TAG = re.compile(r'"([0-9]{1,10})\.([0-9]{1,10})"')


def etag(todo: Row[Any]) -> str:
    return f'"{todo.id}.{todo.version}"'


def _candidates(header: str) -> list[str]:
    return [candidate.strip() for candidate in header.split(",")]


def none_match(header: str | None, tag: str) -> bool:
    """If-None-Match (RFC 9110 section 13.1.2): weak comparison, `W/` ignored."""
    if header is None:
        return False
    candidates = [candidate.removeprefix("W/") for candidate in _candidates(header)]
    return "*" in candidates or tag in candidates


def _matching_versions(header: str | None, todo_id: int) -> list[int] | None:
    """If-Match (RFC 9110 section 13.1.1) as the versions it accepts; None: any version.

    Strong comparison: a weak tag (`W/"..."`) never matches."""
    if header is None or "*" in _candidates(header):
        return None
    tags = (_TAG.fullmatch(candidate) for candidate in _candidates(header))
    return [int(tag[2]) for tag in tags if tag is not None and int(tag[1]) == todo_id and int(tag[2]) <= INT_MAX]


# Data functions: the session first, keyword-only arguments, never a commit. The hot ones
# run prepared Core statements on the session's connection: no ORM objects to build.


def _filters(*, by_owner: bool, by_completed: bool) -> list[ColumnElement[bool]]:
    where = []
    if by_owner:
        where.append(Todo.owner_id == bindparam("owner_id"))
    if by_completed:
        where.append(Todo.completed == bindparam("completed"))
    return where


@cache
def _page_statement(*, by_owner: bool, by_completed: bool) -> Select[Any]:
    """A page: the ids first, from the index the filters name alone ((owner_id, id),
    (owner_id, completed, id), (completed, id) or the primary key), in id order from the
    cursor, limit + 1 of them (the extra one says whether a next page exists); then their rows
    by primary key. Asked for whole rows at once, PostgreSQL may instead walk the primary key
    and throw away other owners' todos, as many as lie between the cursor and the next of the
    caller's: the whole table, past the caller's last todo. tests/test_query_plans.py checks
    the plans on both databases."""
    ids = (
        select(Todo.id)
        .where(Todo.id > bindparam("after_id"), *_filters(by_owner=by_owner, by_completed=by_completed))
        .order_by(Todo.id)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
        .subquery("page")
    )
    return select(*_COLUMNS).join_from(ids, Todo, Todo.id == ids.c.id).order_by(ids.c.id)


@cache
def _count_statement(*, by_owner: bool, by_completed: bool) -> Select[Any]:
    """How many match: from the same index, without reading a row (an index-only count)."""
    return select(func.count()).select_from(Todo).where(*_filters(by_owner=by_owner, by_completed=by_completed))


def list_todos(
    session: Session,
    *,
    user: Principal,
    owner_id: int | None,
    completed: bool | None,
    after_id: int | None = None,
    offset: int = 0,
    limit: int,
    count: bool = False,
) -> tuple[Sequence[Row[Any]], bool, int | None]:
    """A page of todos, whether more follow, and, when asked, how many match in all."""
    if owner_id is not None and owner_id != user.id and not user.is_superuser:
        raise Forbidden("Not allowed to list another user's todos")
    if owner_id is None and not user.is_superuser:
        owner_id = user.id
    shape = {"by_owner": owner_id is not None, "by_completed": completed is not None}
    values = {"owner_id": owner_id, "completed": completed, "after_id": after_id or 0, "offset": offset}
    connection = session.connection()
    rows = connection.execute(_page_statement(**shape), {**values, "limit": limit + 1}).all()
    total = connection.execute(_count_statement(**shape), values).scalar_one() if count else None
    return rows[:limit], len(rows) > limit, total


_TODO = select(*_COLUMNS).where(Todo.id == bindparam("id"))


def find_todo(session: Session, *, user: Principal, todo_id: int) -> tuple[Row[Any], Principal | None]:
    """Fetch it or 404, and is it yours? A superuser may read anyone's. With its owner."""
    connection = session.connection()
    todo = connection.execute(_TODO, {"id": todo_id}).first()
    if todo is None or (todo.owner_id != user.id and not user.is_superuser):
        raise NotFound("Todo not found")
    owner = user if todo.owner_id == user.id else find_principal(session, todo.owner_id)
    return todo, owner


_CREATE = (
    insert(Todo)
    .values(
        text=bindparam("new_text"),
        completed=bindparam("new_completed"),
        due_date=bindparam("new_due_date"),
        owner_id=bindparam("caller_id"),
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
        version=1,
    )
    .returning(*_COLUMNS)
)


def create_todo(session: Session, *, user: Principal, data: TodoCreate) -> Row[Any]:
    values = {
        "new_text": data.text,
        "new_completed": data.completed,
        "new_due_date": data.due_date,
        "caller_id": user.id,
        "now": utcnow(),
    }
    return session.connection().execute(_CREATE, values).one()


def update_todo(
    session: Session, *, user: Principal, todo_id: int, changes: dict[str, Any], if_match: str | None
) -> Row[Any]:
    """One UPDATE that checks ownership and the version the client saw, and bumps it: two
    writers holding the same ETag cannot both succeed, on either database."""
    versions = _matching_versions(if_match, todo_id)
    statement = _update_statement(fields=tuple(sorted(changes)), versioned=versions is not None)
    values = {f"new_{name}": value for name, value in changes.items()}
    values.update(todo_id=todo_id, caller_id=user.id, versions=versions, now=utcnow())
    row = session.connection().execute(statement, values).first()
    if row is None:
        _refuse(session, user=user, todo_id=todo_id)
    return row


def delete_todo(session: Session, *, user: Principal, todo_id: int, if_match: str | None) -> None:
    versions = _matching_versions(if_match, todo_id)
    statement = _delete_statement(versioned=versions is not None)
    values = {"todo_id": todo_id, "caller_id": user.id, "versions": versions}
    if session.connection().execute(statement, values).first() is None:
        _refuse(session, user=user, todo_id=todo_id)


# The changes' statements, one per shape (which fields, whether If-Match was sent), built
# once: building one per request costs as much again as running it.


@cache
def _update_statement(*, fields: tuple[str, ...], versioned: bool) -> Executable:
    changes: dict[str, Any] = {name: bindparam(f"new_{name}") for name in fields}
    return (
        update(Todo)
        .where(*_own(versioned=versioned))
        .values(**changes, updated_at=bindparam("now"), version=Todo.version + 1)
        .returning(*_COLUMNS)
    )


@cache
def _delete_statement(*, versioned: bool) -> Executable:
    return delete(Todo).where(*_own(versioned=versioned)).returning(Todo.id)


def _own(*, versioned: bool) -> list[ColumnElement[bool]]:
    """The todo, if the caller owns it and, with If-Match, if it still has a version they saw."""
    where = [Todo.id == bindparam("todo_id"), Todo.owner_id == bindparam("caller_id")]
    if versioned:
        where.append(Todo.version.in_(bindparam("versions", expanding=True)))
    return where


def _refuse(session: Session, *, user: Principal, todo_id: int) -> NoReturn:
    """Why a change touched no row: not the caller's (404), or changed since (412)."""
    owner_id = session.connection().execute(select(Todo.owner_id).where(Todo.id == todo_id)).scalar()
    if owner_id != user.id:
        raise NotFound("Todo not found")
    raise PreconditionFailed()


# Handlers


async def list_endpoint(call: Call[None, TodoFilter]) -> Reply:
    query = call.query
    rows, more, total = await call.read_as_user(
        list_todos,
        owner_id=query.user_id,
        completed=query.completed,
        after_id=query.after_id,
        offset=query.offset,
        limit=query.limit,
        count=query.count,
    )
    return Reply(rows, headers=call.page_headers(rows, more=more, limit=query.limit, total=total))


def _created(session: Session, *, user: Principal, data: TodoCreate, prefix: str) -> Reply:
    # The Reply is made in the write's transaction: an Idempotency-Key stores it there.
    todo = create_todo(session, user=user, data=data)
    return Reply(todo, headers={"Location": f"{prefix}/todos/{todo.id}", "ETag": etag(todo)})


async def create_endpoint(call: Call[None, None, TodoCreate]) -> Reply:
    return await call.write_as_user(_created, data=call.body, prefix=call.services.settings.api_prefix)


async def get_endpoint(call: Call[ById]) -> Reply:
    todo, owner = await call.read_as_user(find_todo, todo_id=call.params.id)
    tag = etag(todo)
    if none_match(call.header(b"if-none-match"), tag):
        return Reply(status=304, headers={"ETag": tag})
    return Reply({**todo._mapping, "owner": owner}, headers={"ETag": tag})


async def _update(call: Call[ById, None, _Body], changes: dict[str, Any]) -> Reply:
    if_match = call.header(b"if-match")
    todo = await call.write_as_user(update_todo, todo_id=call.params.id, changes=changes, if_match=if_match)
    return Reply(todo, headers={"ETag": etag(todo)})


async def replace_endpoint(call: Call[ById, None, TodoReplace]) -> Reply:
    body = call.body
    if body.id is not None and body.id != call.params.id:
        raise ValidationFailed([validation_issue("value_error", ["body", "id"], "id must match the id in the path")])
    return await _update(call, body.changes())


async def patch_endpoint(call: Call[ById, None, TodoPatch]) -> Reply:
    body = call.body
    return await _update(call, body.model_dump(include=body.model_fields_set))


async def delete_endpoint(call: Call[ById]) -> None:
    await call.write_as_user(delete_todo, todo_id=call.params.id, if_match=call.header(b"if-match"))


_ITEM_ERRORS = (401, 404, 422)

OPERATIONS: list[Operation] = [
    Operation(
        method="GET",
        path="/todos/",
        name="list_todos",
        tag="todos",
        summary="List todos",
        description=(
            "The caller's todos ordered by id; a superuser sees everyone's, or one user's with `user_id`."
            " Page with `after_id` (follow `Link`), or with `offset`; `count=true` adds `X-Total-Count`."
        ),
        handler=list_endpoint,
        auth=Auth.USER,
        query=TodoFilter,
        response=list[TodoRead],
        errors=(401, 403, 422),
        headers=_LIST_HEADERS,
    ),
    Operation(
        method="POST",
        path="/todos/",
        name="create_todo",
        tag="todos",
        summary="Create a todo",
        handler=create_endpoint,
        status=201,
        auth=Auth.USER,
        body=TodoCreate,
        response=TodoRead,
        errors=(401, 413, 415, 422),
        headers=_CREATED_HEADERS,
        idempotent=True,
    ),
    Operation(
        method="GET",
        path="/todos/{id}",
        name="get_todo",
        tag="todos",
        summary="Get a todo with its owner",
        description="Yours, or anyone's for a superuser; someone else's is a 404.",
        handler=get_endpoint,
        auth=Auth.USER,
        params=ById,
        response=TodoReadNested,
        errors=_ITEM_ERRORS,
        replies=(304,),
        headers=_ETAG,
        request_headers=_IF_NONE_MATCH,
    ),
    Operation(
        method="PUT",
        path="/todos/{id}",
        name="replace_todo",
        tag="todos",
        summary="Replace a todo's text, completed and due date",
        description=(
            "Owner only; text and completed are replaced (`completed` left out is false);"
            " `due_date` left out stays as it is."
        ),
        handler=replace_endpoint,
        auth=Auth.USER,
        params=ById,
        body=TodoReplace,
        response=TodoRead,
        errors=(401, 404, 412, 413, 415, 422),
        headers=_ETAG,
        request_headers=_IF_MATCH,
    ),
    Operation(
        method="PATCH",
        path="/todos/{id}",
        name="update_todo",
        tag="todos",
        summary="Change some of a todo's fields",
        description="Owner only; only the fields sent change.",
        handler=patch_endpoint,
        auth=Auth.USER,
        params=ById,
        body=TodoPatch,
        response=TodoRead,
        errors=(401, 404, 412, 413, 415, 422),
        headers=_ETAG,
        request_headers=_IF_MATCH,
    ),
    Operation(
        method="DELETE",
        path="/todos/{id}",
        name="delete_todo",
        tag="todos",
        summary="Delete a todo",
        description="Owner only.",
        handler=delete_endpoint,
        status=204,
        auth=Auth.USER,
        params=ById,
        errors=(401, 404, 412, 422),
        request_headers=_IF_MATCH,
    ),
]
