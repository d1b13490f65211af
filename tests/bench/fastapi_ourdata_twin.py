"""FastAPI over asgi_todo's own data layer: the benchmark's third twin.

The FastAPI twin (fastapi_twin.py) is the contract written the way FastAPI's docs teach it,
ORM, sync endpoints and all; it answers "what does a typical FastAPI app cost". This one
answers "how much of the difference is the framework": `async def` endpoints, `Depends` for
the unit of work and the current user, `response_model` for the output, FastAPI's routing,
validation, OpenAPI and serialisation; and under them everything else of asgi_todo's own:
its lifespan and services (the same SQL and bcrypt threads), its data functions with their
prepared Core statements, the caller read in the same thread hop as the work, its account
service (logins, lockout, refresh tokens), its pure ASGI middleware (request id, security
headers, errors, body limit, bearer decode) and its error bodies.

Known differences, left as FastAPI gives them (`twin_differs(..., twin="fastapi-ourdata")`
in the contract tests): a body that is not JSON is a 422 (not a 415); `grant_type` other than
"password" is a 422 (OAuth2PasswordRequestForm's pattern), not a 400, and so there is no
refresh grant; a collection path without its trailing slash is a 307. No metrics
(asgi_todo's cost a few per cent at most: `python -m tests.bench.stack --feature metrics`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar, cast

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy.orm import Session
from starlette.types import Scope

from asgi_todo import __version__, accounts
from asgi_todo.api.auth import NO_STORE
from asgi_todo.api.todos import create_todo, delete_todo, etag, find_todo, list_todos, none_match, update_todo
from asgi_todo.api.users import create_user, find_user, list_users
from asgi_todo.app import _lifespan
from asgi_todo.auth import Principal, current_user
from asgi_todo.context import BEARER, Services, require_claims
from asgi_todo.drain import PROCESS
from asgi_todo.errors import ApiError, ServiceUnavailable, ValidationFailed, error_response, validation_issue
from asgi_todo.middleware import BearerDecode, BodyLimit, Errors, RequestId, SecurityHeaders
from asgi_todo.operations import AnyCall, page_headers
from asgi_todo.schemas import (
    Health,
    Message,
    Page,
    TodoCreate,
    TodoFilter,
    TodoPatch,
    TodoRead,
    TodoReadNested,
    TodoReplace,
    Token,
    UserCreate,
    UserRead,
    UserReadNested,
)
from asgi_todo.security import Claims
from asgi_todo.settings import Settings, load_settings
from tests.bench.fastapi_twin import TodoId, UserId, oauth2_scheme, validation_error

NAME = "asgi_todo-fastapi-ourdata-twin"
T = TypeVar("T")
Args = ParamSpec("Args")


# Dependencies: the unit of work, and the current user in it


class UnitOfWork:
    """The request's session, and asgi_todo's SQL threads to run data functions on it: one
    hop each (db.Database.read/write), committed before the response starts."""

    def __init__(self, services: Services, session: Session, scope: Scope) -> None:
        self.services, self.session, self.scope = services, session, scope
        self.claims: Claims | None = None

    @property
    def client_address(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else "unknown"

    async def read(self, fn: Callable[Concatenate[Session, Args], T], /, *args: Args.args, **kwargs: Args.kwargs) -> T:
        return await self.services.db.read(self.session, fn, *args, **kwargs)

    async def write(self, fn: Callable[Concatenate[Session, Args], T], /, *args: Args.args, **kwargs: Args.kwargs) -> T:
        return await self.services.db.write(self.session, fn, *args, **kwargs)

    def as_call(self) -> AnyCall:
        """For asgi_todo's account service, which asks a request for no more than this has."""
        return cast(AnyCall, self)


class Caller(UnitOfWork):
    """A unit of work whose data functions also get the caller (their second positional
    parameter): read in the same hop as the work, as asgi_todo does (a dependency that loaded
    it would cost a second hop)."""

    def __init__(self, work: UnitOfWork, claims: Claims, *, superuser: bool) -> None:
        super().__init__(work.services, work.session, work.scope)
        self.claims, self._checked, self.superuser = claims, claims, superuser

    async def read_as_user(
        self, fn: Callable[Concatenate[Session, Principal, Args], T], /, *args: Args.args, **kwargs: Args.kwargs
    ) -> T:
        return await self.read(self._as_user(fn, keep=False), *args, **kwargs)

    async def write_as_user(
        self, fn: Callable[Concatenate[Session, Principal, Args], T], /, *args: Args.args, **kwargs: Args.kwargs
    ) -> T:
        return await self.write(self._as_user(fn, keep=True), *args, **kwargs)

    def _as_user(
        self, fn: Callable[Concatenate[Session, Principal, Args], T], *, keep: bool
    ) -> Callable[Concatenate[Session, Args], T]:
        claims, superuser = self._checked, self.superuser

        def as_user(session: Session, /, *args: Args.args, **kwargs: Args.kwargs) -> T:
            return fn(session, current_user(session, claims, superuser=superuser, keep=keep), *args, **kwargs)

        return as_user


# --8<-- [start:unit-of-work]
async def unit_of_work(request: Request) -> AsyncIterator[UnitOfWork]:
    """One session per request, closed after it (a yield dependency, as FastAPI's `get_db`)."""
    services: Services = request.state.services
    with services.db.sessions() as session:
        yield UnitOfWork(services, session, request.scope)


Work = Annotated[UnitOfWork, Depends(unit_of_work)]
# --8<-- [end:unit-of-work]


# --8<-- [start:current-user]
async def current_claims(request: Request, token: Annotated[str, Depends(oauth2_scheme)]) -> Claims:
    """The token, checked: asgi_todo's BearerDecode middleware has decoded it (and remembers
    tokens it verified); OAuth2PasswordBearer answers a request without one."""
    return require_claims(request.scope[BEARER])


ClaimsDep = Annotated[Claims, Depends(current_claims)]


async def current_user_dep(work: Work, claims: ClaimsDep) -> Caller:
    return Caller(work, claims, superuser=False)


async def current_superuser(work: Work, claims: ClaimsDep) -> Caller:
    return Caller(work, claims, superuser=True)


CurrentUser = Annotated[Caller, Depends(current_user_dep)]
SuperUser = Annotated[Caller, Depends(current_superuser)]
# --8<-- [end:current-user]
OptionalHeader = Annotated[str | None, Header()]


# Service


service = APIRouter(tags=["service"])


@service.get("/", response_model=Message)
async def root(request: Request) -> dict[str, str]:
    settings: Settings = request.app.state.settings
    return {"msg": f"{NAME} {__version__}: the API is under {settings.api_prefix}, its docs at /docs"}


def _ping(session: Session) -> None:
    session.connection().exec_driver_sql("SELECT 1")


@service.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(work: Work, response: Response) -> Health:
    try:
        await work.read(_ping)
    except ServiceUnavailable:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(name=NAME, version=__version__, database="unavailable")
    return Health(name=NAME, version=__version__, database="ok")


# Auth


auth = APIRouter(prefix="/auth", tags=["auth"])


@auth.post("/token", response_model=Token)
async def login(form: Annotated[OAuth2PasswordRequestForm, Depends()], work: Work, response: Response) -> Token:
    token = await accounts.log_in(work.as_call(), email=form.username, password=form.password)
    response.headers.update(NO_STORE)
    return token


def _me(session: Session, user: Principal, /) -> Principal:
    return user


@auth.get("/me", response_model=UserRead)
async def read_me(caller: CurrentUser) -> Principal:
    return await caller.read_as_user(_me)


# Users


users = APIRouter(prefix="/users", tags=["users"])


@users.post("/signup", response_model=UserRead, status_code=status.HTTP_201_CREATED)
async def signup(data: UserCreate, work: Work, response: Response) -> Any:
    await accounts.reserve_sign_up(work.as_call())
    hashed = await work.services.passwords.hash(data.password)
    user = await work.write(create_user, data=data, hashed_password=hashed)
    response.headers["Location"] = f"{work.services.settings.api_prefix}/users/{user.id}"
    return user


@users.get("/", response_model=list[UserRead])
async def read_users(caller: SuperUser, page: Annotated[Page, Query()], response: Response) -> Sequence[Any]:
    rows, more, total = await caller.read_as_user(
        list_users, after_id=page.after_id, offset=page.offset, limit=page.limit, count=page.count
    )
    after = rows[-1].id if more else None
    response.headers.update(page_headers(caller.scope, after=after, limit=page.limit, total=total))
    return rows


@users.get("/{id}", response_model=UserReadNested)
async def read_user(user_id: UserId, caller: CurrentUser) -> Any:
    return await caller.read_as_user(find_user, user_id=user_id)


# Todos


todos = APIRouter(prefix="/todos", tags=["todos"])


@todos.get("/", response_model=list[TodoRead])
async def read_todos(caller: CurrentUser, filters: Annotated[TodoFilter, Query()], response: Response) -> Sequence[Any]:
    rows, more, total = await caller.read_as_user(
        list_todos,
        owner_id=filters.user_id,
        completed=filters.completed,
        after_id=filters.after_id,
        offset=filters.offset,
        limit=filters.limit,
        count=filters.count,
    )
    after = rows[-1]["id"] if more else None
    response.headers.update(page_headers(caller.scope, after=after, limit=filters.limit, total=total))
    return rows


# --8<-- [start:create]
@todos.post("/", response_model=TodoRead, status_code=status.HTTP_201_CREATED)
async def create(data: TodoCreate, caller: CurrentUser, response: Response) -> Any:
    todo = await caller.write_as_user(create_todo, data=data)
    response.headers["Location"] = f"{caller.services.settings.api_prefix}/todos/{todo.id}"
    response.headers["ETag"] = etag(todo)
    return todo


# --8<-- [end:create]


@todos.get("/{id}", response_model=TodoReadNested)
async def read_todo(
    todo_id: TodoId, caller: CurrentUser, response: Response, if_none_match: OptionalHeader = None
) -> Any:
    todo, owner = await caller.read_as_user(find_todo, todo_id=todo_id)
    tag = etag(todo)
    if none_match(if_none_match, tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
    response.headers["ETag"] = tag
    return {**todo._mapping, "owner": owner}


async def _update(
    caller: Caller, todo_id: int, changes: dict[str, Any], if_match: str | None, response: Response
) -> Any:
    todo = await caller.write_as_user(update_todo, todo_id=todo_id, changes=changes, if_match=if_match)
    response.headers["ETag"] = etag(todo)
    return todo


@todos.put("/{id}", response_model=TodoRead)
async def replace_todo(
    todo_id: TodoId, data: TodoReplace, caller: CurrentUser, response: Response, if_match: OptionalHeader = None
) -> Any:
    if data.id is not None and data.id != todo_id:
        raise ValidationFailed([validation_issue("value_error", ["body", "id"], "id must match the id in the path")])
    return await _update(caller, todo_id, data.changes(), if_match, response)


@todos.patch("/{id}", response_model=TodoRead)
async def patch_todo(
    todo_id: TodoId, data: TodoPatch, caller: CurrentUser, response: Response, if_match: OptionalHeader = None
) -> Any:
    return await _update(caller, todo_id, data.model_dump(include=data.model_fields_set), if_match, response)


@todos.delete("/{id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_todo(todo_id: TodoId, caller: CurrentUser, if_match: OptionalHeader = None) -> None:
    await caller.write_as_user(delete_todo, todo_id=todo_id, if_match=if_match)


# Errors: asgi_todo's own bodies, from its exception tree


async def api_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


# The app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    # asgi_todo's own lifespan: the same services, SQL threads and bcrypt threads (no metrics).
    app = FastAPI(
        title=NAME, version=__version__, lifespan=partial(_lifespan, settings=settings, drain=PROCESS, observed=None)
    )
    app.state.settings = settings
    app.include_router(service)
    for router in (auth, users, todos):
        app.include_router(router, prefix=settings.api_prefix)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    # asgi_todo's middleware, outermost last (add_middleware wraps what is there); CORS left out.
    app.add_middleware(BearerDecode)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Errors)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestId)
    return app
