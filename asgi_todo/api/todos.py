"""Todos: the caller's own (a superuser's: everyone's), with full CRUD.

Each todo has an ETag (its id and version): `If-None-Match` on GET answers 304 when the
client's copy is current, and `If-Match` on PUT, PATCH and DELETE refuses with 412 a change
based on a stale copy, so two clients editing one todo cannot silently overwrite each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, joinedload

from ..errors import Forbidden, NotFound, PreconditionFailed, ValidationFailed, validation_issue
from ..models import Todo, User, utcnow
from ..operations import Auth, Call, Operation, Reply
from ..schemas import ById, TodoCreate, TodoFilter, TodoPatch, TodoRead, TodoReadNested, TodoReplace

_COLUMNS = (Todo.id, Todo.text, Todo.completed, Todo.owner_id, Todo.created_at, Todo.updated_at)
_LIST_HEADERS = {"X-Total-Count": "How many todos match, ignoring offset and limit."}
_ETAG = {"ETag": "The todo's version; send it back in If-Match (changes) or If-None-Match (GET)."}
_CREATED_HEADERS = {"Location": "The new todo's URL.", **_ETAG}
_IF_MATCH = {"If-Match": "Change only if the todo still has this ETag (else 412)."}
_IF_NONE_MATCH = {"If-None-Match": "Answer 304, with no body, if the todo still has this ETag."}


def etag(todo: Todo) -> str:
    return f'"{todo.id}.{todo.version}"'


def etag_matches(header: str | None, tag: str, *, weak: bool) -> bool:
    """RFC 9110 section 13.1: If-None-Match compares weakly (`W/` ignored), If-Match strongly
    (a weak tag never matches)."""
    if header is None:
        return False
    candidates = [candidate.strip() for candidate in header.split(",")]
    if weak:
        candidates = [candidate.removeprefix("W/") for candidate in candidates]
    return "*" in candidates or tag in candidates


# Data functions: the session first, keyword-only arguments, never a commit.


def list_todos(
    session: Session, *, user: User, owner_id: int | None, completed: bool | None, offset: int, limit: int
) -> tuple[Sequence[Any], int]:
    if owner_id is not None and owner_id != user.id and not user.is_superuser:
        raise Forbidden("Not allowed to list another user's todos")
    if owner_id is None and not user.is_superuser:
        owner_id = user.id
    where: list[ColumnElement[bool]] = []
    if owner_id is not None:
        where.append(Todo.owner_id == owner_id)
    if completed is not None:
        where.append(Todo.completed == completed)
    total = session.scalar(select(func.count()).select_from(Todo).where(*where)) or 0
    rows = session.execute(select(*_COLUMNS).where(*where).order_by(Todo.id).offset(offset).limit(limit)).all()
    return rows, total


def find_todo(session: Session, *, user: User, todo_id: int) -> Todo:
    """Fetch it or 404, and is it yours? A superuser may read anyone's."""
    todo = session.get(Todo, todo_id, options=[joinedload(Todo.owner)])
    if todo is None or (todo.owner_id != user.id and not user.is_superuser):
        raise NotFound("Todo not found")
    return todo


def own_todo(session: Session, *, user: User, todo_id: int, if_match: str | None) -> Todo:
    """The caller's own todo, locked for the change (FOR UPDATE; SQLite's writer lock is
    already held), and still at the version the client saw, when it says which."""
    todo = session.get(Todo, todo_id, with_for_update=True)
    if todo is None or todo.owner_id != user.id:
        raise NotFound("Todo not found")
    if if_match is not None and not etag_matches(if_match, etag(todo), weak=False):
        raise PreconditionFailed()
    return todo


def create_todo(session: Session, *, user: User, data: TodoCreate) -> Todo:
    now = utcnow()
    todo = Todo(text=data.text, completed=data.completed, owner_id=user.id, created_at=now, updated_at=now)
    session.add(todo)
    session.flush()
    return todo


def update_todo(session: Session, *, user: User, todo_id: int, changes: dict[str, Any], if_match: str | None) -> Todo:
    todo = own_todo(session, user=user, todo_id=todo_id, if_match=if_match)
    for name, value in changes.items():
        setattr(todo, name, value)
    todo.updated_at = utcnow()
    session.flush()
    return todo


def delete_todo(session: Session, *, user: User, todo_id: int, if_match: str | None) -> None:
    session.delete(own_todo(session, user=user, todo_id=todo_id, if_match=if_match))


# Handlers


async def list_endpoint(call: Call) -> Reply:
    query: TodoFilter = call.query
    rows, total = await call.read(
        list_todos,
        owner_id=query.user_id,
        completed=query.completed,
        offset=query.offset,
        limit=query.limit,
    )
    return Reply(rows, headers={"X-Total-Count": str(total)})


async def create_endpoint(call: Call) -> Reply:
    todo = await call.write(create_todo, data=call.body)
    location = f"{call.services.settings.api_prefix}/todos/{todo.id}"
    return Reply(todo, headers={"Location": location, "ETag": etag(todo)})


async def get_endpoint(call: Call) -> Reply:
    todo = await call.read(find_todo, todo_id=call.params.id)
    tag = etag(todo)
    if etag_matches(call.header(b"if-none-match"), tag, weak=True):
        return Reply(status=304, headers={"ETag": tag})
    return Reply(todo, headers={"ETag": tag})


async def _update(call: Call, changes: dict[str, Any]) -> Reply:
    if_match = call.header(b"if-match")
    todo = await call.write(update_todo, todo_id=call.params.id, changes=changes, if_match=if_match)
    return Reply(todo, headers={"ETag": etag(todo)})


async def replace_endpoint(call: Call) -> Reply:
    body: TodoReplace = call.body
    if body.id is not None and body.id != call.params.id:
        raise ValidationFailed([validation_issue("value_error", ["body", "id"], "id must match the id in the path")])
    return await _update(call, {"text": body.text, "completed": body.completed})


async def patch_endpoint(call: Call) -> Reply:
    body: TodoPatch = call.body
    return await _update(call, body.model_dump(include=body.model_fields_set))


async def delete_endpoint(call: Call) -> None:
    await call.write(delete_todo, todo_id=call.params.id, if_match=call.header(b"if-match"))


_ITEM_ERRORS = (401, 404, 422)

OPERATIONS = [
    Operation(
        method="GET",
        path="/todos/",
        name="list_todos",
        tag="todos",
        summary="List todos",
        description="The caller's todos ordered by id; a superuser sees everyone's, or one user's with `user_id`.",
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
        summary="Replace a todo's text and completed",
        description="Owner only. A body `id`, if sent, must equal the path id.",
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
