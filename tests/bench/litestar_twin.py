"""The asgi_todo contract written the way Litestar's own docs teach it: the benchmark's second twin.

Litestar's SQLAlchemy plugin (`SQLAlchemySyncConfig`: a session per request as the
`db_session` dependency, committed by its `autocommit` before-send handler), sync handlers
run in threads (`sync_to_thread=True`), pydantic models for bodies and answers (Litestar's
pydantic plugin), `OAuth2PasswordBearerAuth` with a `retrieve_user_handler` and its `login()`
for the token answer, `Parameter` bounds, `Provide` dependencies, and Litestar's exception
types turned into the contract's JSON by exception handlers. It runs over asgi_todo's
models, schemas, database set-up and HS256 key, so tokens work on every app.

Known differences, left as Litestar gives them (the `twin_differs(..., twin="litestar")`
marks in the tests list them): a body that is not JSON, or malformed, is a 400 (not a 415
or 422); the form is the password grant only, so `grant_type=foo` is a 422 (not a 400);
a path id that is not an integer is a 404; validation errors carry Litestar's messages; no
body-size limit (413); no access log; the start-up work (RESET_DB, the key) runs when the
app is built, since `OAuth2PasswordBearerAuth` needs its secret then.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Annotated, Any

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin, SQLAlchemySyncConfig, sync_autocommit_handler_maker
from litestar import Litestar, Request, Response, Router, delete, get, patch, post, put
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter, URLEncodedBody
from litestar.security.jwt import OAuth2PasswordBearerAuth, Token
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_422_UNPROCESSABLE_ENTITY
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.types import Message as ASGIMessage
from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, joinedload, selectinload

from asgi_todo import __version__, security
from asgi_todo.db import Database, make_engine
from asgi_todo.limits import INT_MAX
from asgi_todo.models import Todo, User, utcnow
from asgi_todo.schemas import (
    Health,
    Message,
    PasswordGrant,
    TodoCreate,
    TodoPatch,
    TodoRead,
    TodoReadNested,
    TodoReplace,
    UserCreate,
    UserRead,
    UserReadNested,
)
from asgi_todo.settings import Settings, load_settings
from asgi_todo.startup import check_schema, prepare, secret_key, start_id

NAME = "asgi_todo-litestar-twin"
# More connections than the benchmark's 32 concurrent requests: the current user is read in one
# executor thread and the handler runs in another, so with fewer, every thread can end up
# waiting for a connection held by a request that waits for a thread (a deadlock until the
# pool timeout). FastAPI's 40 threadpool tokens give its twin the same headroom.
POOL_SIZE = 40
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MSG_MAX = 200
_BEARER = {"WWW-Authenticate": "Bearer"}
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NOT_AUTHENTICATED = "Not authenticated"
_INVALID = "Invalid authentication credentials"
_WRONG_LOGIN = "Incorrect email or password"
_EMAIL_TAKEN = "Email already registered."

Id = Annotated[int, PathParameter(ge=1, le=INT_MAX)]
Offset = Annotated[int, QueryParameter(ge=0, le=INT_MAX)]
Limit = Annotated[int, QueryParameter(ge=1, le=100)]
DbSession = NamedDependency[Session]
SettingsDep = NamedDependency[Settings]
CurrentUser = NamedDependency[User]
CurrentSuperuser = NamedDependency[User]


# Authentication: the middleware checks the token; the user is loaded with the request's session.


async def retrieve_user_handler(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> int | None:
    """The token's user id; the row itself is read by `current_user` in the handler's session."""
    subject = token.sub
    if not (subject.isascii() and subject.isdecimal() and len(subject) <= 10):
        return None
    version = token.extras.get("ver", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    user_id = int(subject)
    return user_id if 1 <= user_id <= INT_MAX else None  # past the column's range: no such user


def current_user(request: Request[int, Token, State], db_session: DbSession) -> User:
    if request.method in _WRITES:
        # As the FastAPI twin's write sessions do: on SQLite a writer's transaction takes the
        # write lock up front (asgi_todo.db's BEGIN IMMEDIATE); upgrading the read that
        # loads the user fails at once with "database is locked" under concurrent writes.
        db_session.connection(execution_options={"sqlite_immediate": True})
    user = db_session.get(User, request.user)
    if user is None:
        raise NotAuthorizedException(_INVALID)
    return user


def current_superuser(current_user: CurrentUser) -> User:
    if not current_user.is_superuser:
        raise PermissionDeniedException("The user doesn't have enough privileges")
    return current_user


# Service


@get("/", exclude_from_auth=True)
async def root(settings: SettingsDep) -> Message:
    return Message(msg=f"{NAME} {__version__}: the API is under {settings.api_prefix}, its docs at /schema")


@get("/health", exclude_from_auth=True, sync_to_thread=True)
def health(db_session: DbSession) -> Response[Health]:
    try:
        db_session.execute(text("SELECT 1"))
    except OperationalError:
        return Response(Health(name=NAME, version=__version__, database="unavailable"), status_code=503)
    return Response(Health(name=NAME, version=__version__, database="ok"))


# Auth


@post("/auth/token", exclude_from_auth=True, status_code=200, sync_to_thread=True)
def login(
    data: URLEncodedBody[PasswordGrant],
    db_session: DbSession,
    state: State,
    settings: SettingsDep,
) -> Response[Any]:
    user = db_session.scalar(select(User).where(User.email == data.username.lower()))
    # An unknown email costs a bcrypt check too, so the answer's timing does not tell.
    hashed = user.hashed_password if user is not None else state.dummy_hash
    if not security.verify_password(data.password, hashed) or user is None:
        raise NotAuthorizedException(_WRONG_LOGIN)
    oauth2: OAuth2PasswordBearerAuth[int, Token] = state.oauth2
    ttl = timedelta(minutes=settings.access_token_expire_minutes)
    response = oauth2.login(identifier=str(user.id), token_expiration=ttl, response_status_code=200)
    response.cookies.clear()  # the contract is a bearer header: a login cookie would authenticate without one
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


@get("/auth/me", sync_to_thread=True)
def read_me(current_user: CurrentUser) -> UserRead:
    return UserRead.model_validate(current_user)


# Users


@post("/users/signup", exclude_from_auth=True, status_code=HTTP_201_CREATED, sync_to_thread=True)
def signup(data: JSONBody[UserCreate], db_session: DbSession, settings: SettingsDep) -> Response[UserRead]:
    # Hash before the first statement: on SQLite that statement takes the write lock.
    hashed = security.hash_password(data.password, rounds=settings.bcrypt_rounds)
    if db_session.scalar(select(User.id).where(User.email == data.email)) is not None:
        raise HTTPException(status_code=409, detail=_EMAIL_TAKEN)
    now = utcnow()
    user = User(
        email=data.email,
        hashed_password=hashed,
        fname=data.fname,
        lname=data.lname,
        is_superuser=False,
        created_at=now,
        updated_at=now,
    )
    db_session.add(user)
    try:
        db_session.flush()
    except IntegrityError:
        raise HTTPException(status_code=409, detail=_EMAIL_TAKEN) from None
    headers = {"Location": f"{settings.api_prefix}/users/{user.id}"}
    return Response(UserRead.model_validate(user), status_code=HTTP_201_CREATED, headers=headers)


@get("/users/", sync_to_thread=True)
def read_users(
    db_session: DbSession,
    current_superuser: CurrentSuperuser,
    offset: Offset = 0,
    limit: Limit = 10,
) -> Response[list[UserRead]]:
    total = db_session.scalar(select(func.count()).select_from(User)) or 0
    found = db_session.scalars(select(User).order_by(User.id).offset(offset).limit(limit)).all()
    return Response([UserRead.model_validate(user) for user in found], headers={"X-Total-Count": str(total)})


@get("/users/{user_id:int}", sync_to_thread=True)
def read_user(user_id: Id, db_session: DbSession, current_user: CurrentUser) -> UserReadNested:
    if user_id != current_user.id and not current_user.is_superuser:
        raise NotFoundException("User not found")
    found = db_session.get(User, user_id, options=[selectinload(User.todos)], populate_existing=True)
    if found is None:
        raise NotFoundException("User not found")
    return UserReadNested.model_validate(found)


# Todos


def _own_todo(db_session: Session, user: User, todo_id: int, *, change: bool = False) -> Todo:
    """Fetch it or 404, and is it yours? A superuser may read anyone's, change only their own.

    A todo about to change is locked first (as asgi_todo does): two writers then take turns."""
    if change:
        todo = db_session.get(Todo, todo_id, with_for_update=True)
    else:
        todo = db_session.get(Todo, todo_id, options=[joinedload(Todo.owner)])
    if todo is None or (todo.owner_id != user.id and (change or not user.is_superuser)):
        raise NotFoundException("Todo not found")
    return todo


@get("/todos/", sync_to_thread=True)
def read_todos(
    db_session: DbSession,
    current_user: CurrentUser,
    offset: Offset = 0,
    limit: Limit = 10,
    completed: FromQuery[bool | None] = None,
    user_id: Annotated[int | None, QueryParameter(ge=1, le=INT_MAX)] = None,
) -> Response[list[TodoRead]]:
    owner_id = user_id
    if owner_id is not None and owner_id != current_user.id and not current_user.is_superuser:
        raise PermissionDeniedException("Not allowed to list another user's todos")
    if owner_id is None and not current_user.is_superuser:
        owner_id = current_user.id
    where: list[ColumnElement[bool]] = []
    if owner_id is not None:
        where.append(Todo.owner_id == owner_id)
    if completed is not None:
        where.append(Todo.completed == completed)
    total = db_session.scalar(select(func.count()).select_from(Todo).where(*where)) or 0
    query = select(Todo).where(*where).order_by(Todo.id).offset(offset).limit(limit)
    found = [TodoRead.model_validate(todo) for todo in db_session.scalars(query)]
    return Response(found, headers={"X-Total-Count": str(total)})


@post("/todos/", status_code=HTTP_201_CREATED, sync_to_thread=True)
def create_todo(
    data: JSONBody[TodoCreate], db_session: DbSession, current_user: CurrentUser, settings: SettingsDep
) -> Response[TodoRead]:
    now = utcnow()
    todo = Todo(text=data.text, completed=data.completed, owner_id=current_user.id, created_at=now, updated_at=now)
    db_session.add(todo)
    db_session.flush()
    headers = {"Location": f"{settings.api_prefix}/todos/{todo.id}"}
    return Response(TodoRead.model_validate(todo), status_code=HTTP_201_CREATED, headers=headers)


@get("/todos/{todo_id:int}", sync_to_thread=True)
def read_todo(todo_id: Id, db_session: DbSession, current_user: CurrentUser) -> TodoReadNested:
    return TodoReadNested.model_validate(_own_todo(db_session, current_user, todo_id))


def _update(db_session: Session, user: User, todo_id: int, changes: dict[str, Any]) -> TodoRead:
    todo = _own_todo(db_session, user, todo_id, change=True)
    for name, value in changes.items():
        setattr(todo, name, value)
    todo.updated_at = utcnow()  # the contract: every update changes it, even to the same values
    db_session.flush()
    return TodoRead.model_validate(todo)


@put("/todos/{todo_id:int}", sync_to_thread=True)
def replace_todo(
    todo_id: Id, data: JSONBody[TodoReplace], db_session: DbSession, current_user: CurrentUser
) -> TodoRead:
    if data.id is not None and data.id != todo_id:
        raise ValidationException(
            extra=[{"key": "id", "message": "id must match the id in the path", "source": "body"}]
        )
    return _update(db_session, current_user, todo_id, {"text": data.text, "completed": data.completed})


@patch("/todos/{todo_id:int}", sync_to_thread=True)
def update_todo(todo_id: Id, data: JSONBody[TodoPatch], db_session: DbSession, current_user: CurrentUser) -> TodoRead:
    return _update(db_session, current_user, todo_id, data.model_dump(exclude_unset=True))


@delete("/todos/{todo_id:int}", status_code=HTTP_204_NO_CONTENT, sync_to_thread=True)
def delete_todo(todo_id: Id, db_session: DbSession, current_user: CurrentUser) -> None:
    db_session.delete(_own_todo(db_session, current_user, todo_id, change=True))
    db_session.flush()


# Errors: the contract's bodies, `{"detail": ...}`; a 422 lists FastAPI-like issues, never the input.


def _short(value: str) -> str:
    return value if len(value) <= _MSG_MAX else value[: _MSG_MAX - 3] + "..."


def _issue(item: Any) -> dict[str, Any]:
    item = item if isinstance(item, dict) else {"message": str(item)}
    source = item.get("source") or "body"
    key = str(item.get("key") or "")
    loc = [source, *(part for part in key.split(".") if part)]
    return {"type": "value_error", "loc": loc, "msg": _short(str(item.get("message", "")))}


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra or {"message": exc.detail}]
    return Response({"detail": [_issue(item) for item in extra]}, status_code=HTTP_422_UNPROCESSABLE_ENTITY)


def not_authorized(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Response[Any]:
    """The middleware's own 401s say why in Litestar's words; the contract has two answers."""
    if exc.detail in (_WRONG_LOGIN, _INVALID):
        detail = exc.detail
    else:
        detail = _INVALID if request.headers.get("authorization") else _NOT_AUTHENTICATED
    return Response({"detail": detail}, status_code=401, headers=_BEARER)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return Response({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def server_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return Response({"detail": "Internal Server Error"}, status_code=500)


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """`X-Request-ID` on every answer: the client's, if sane, or a new one."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"x-request-id"), "")
        request_id = (given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex).encode()

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


# The app


def _commit_on_the_loop(session_scope_key: str) -> Callable[[ASGIMessage, Scope], Awaitable[None]]:
    """The plugin's autocommit, on the event loop. Given as a sync hook ("autocommit"), Litestar
    runs it in the default executor, whose few threads all end up in handlers waiting for a
    pooled connection that only a commit waiting for a thread would give back: under 32
    concurrent requests the app deadlocked until the pool timeout."""
    autocommit = sync_autocommit_handler_maker(session_scope_key=session_scope_key)

    async def before_send(message: ASGIMessage, scope: Scope) -> None:
        autocommit(message, scope)

    return before_send


def _enough_threads() -> None:
    """Sync handlers and dependencies run in the loop's default executor (Litestar's
    `sync_to_thread`), which has min(32, CPUs + 4) threads: 6 here. On SQLite a write's
    `current_user` takes the write lock in one of them and its handler needs another, so six
    writers waiting for the lock held all six threads, the holder's handler never ran, and
    every request after waited out the busy timeout. More threads than the benchmark's 32
    concurrent requests, as FastAPI's 40 threadpool tokens."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="litestar-twin"))


def _start(settings: SettingsDep) -> str:
    """RESET_DB / UPDATE_DB and the schema check, as asgi_todo does; the signing key."""
    prepare(settings, start=start_id())
    database = Database(settings)
    try:
        check_schema(database)
        return secret_key(settings, database)
    finally:
        database.close()


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    key = _start(settings)
    oauth2 = OAuth2PasswordBearerAuth[int, Token](
        retrieve_user_handler=retrieve_user_handler,
        token_secret=key,
        token_url=f"{settings.api_prefix}/auth/token",
        require_claims=["exp", "iat", "sub"],
        default_token_expiration=timedelta(minutes=settings.access_token_expire_minutes),
        exclude=["^/schema"],
    )
    engine = make_engine(settings, pool_size=POOL_SIZE)
    alchemy = SQLAlchemySyncConfig(
        engine_instance=engine,
        session_dependency_key="db_session",
    )
    alchemy.before_send_handler = _commit_on_the_loop(alchemy.session_scope_key)
    api = Router(
        path=settings.api_prefix,
        route_handlers=[
            *(login, read_me, signup, read_users, read_user),
            *(read_todos, create_todo, read_todo, replace_todo, update_todo, delete_todo),
        ],
    )
    cors = None
    if settings.cors_origins:
        cors = CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Total-Count", "Location"],
            allow_credentials="*" not in settings.cors_origins,
        )
    dummy_hash = security.hash_password(security.new_secret_key()[:16], rounds=settings.bcrypt_rounds)
    return Litestar(
        route_handlers=[root, health, api],
        plugins=[SQLAlchemyPlugin(config=alchemy)],
        on_app_init=[oauth2.on_app_init],
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "current_user": Provide(current_user, sync_to_thread=True),
            "current_superuser": Provide(current_superuser, sync_to_thread=False),
        },
        exception_handlers={
            ValidationException: validation_error,
            NotAuthorizedException: not_authorized,
            HTTPException: http_error,
            Exception: server_error,
        },
        middleware=[request_id_middleware],
        cors_config=cors,
        state=State({"oauth2": oauth2, "dummy_hash": dummy_hash}),
        on_startup=[_enough_threads],
        on_shutdown=[engine.dispose],  # the plugin disposes only an engine it made itself
        debug=False,
    )
