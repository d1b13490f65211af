"""The asgi_todo contract written the way FastAPI's own docs teach it: the benchmark's twin.

`Depends` with a yielding SQLAlchemy session, `OAuth2PasswordBearer`,
`OAuth2PasswordRequestForm`, `response_model`, sync `def` endpoints and `HTTPException`,
over asgi_todo's models, schemas, database set-up and token codec, so tokens work on both
and the contract tests run against both (`pytest.mark.twin` in tests/conftest.py).

Known differences, left as FastAPI gives them: a body that is not JSON is a 422 (not a
415); `grant_type` other than "password" is a 422 (the form's pattern), not a 400; no
body-size limit (413); no access log; Swagger UI from a CDN.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel
from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from asgi_todo import __version__, security
from asgi_todo.db import Database, make_engine
from asgi_todo.limits import INT_MAX
from asgi_todo.models import Todo, User, utcnow
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
    UserCreate,
    UserRead,
    UserReadNested,
)
from asgi_todo.settings import Settings, load_settings
from asgi_todo.startup import check_schema, prepare, secret_key, start_id

NAME = "asgi_todo-fastapi-twin"
# SQLAlchemy's default pool (5 + 10 overflow), the size the FastAPI tutorial's engine has.
POOL_SIZE = 15
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MSG_MAX = 200
_BEARER = {"WWW-Authenticate": "Bearer"}


class Token(BaseModel):
    """The core contract's token answer (asgi_todo's own may carry more, such as a refresh token)."""

    access_token: str
    token_type: str
    expires_in: int


# The URL is only for the OpenAPI document (Swagger UI's Authorize dialog), at the default API_PREFIX.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="api/auth/token")


# Dependencies


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _sessions(request: Request, *, write: bool) -> Iterator[Session]:
    sessions: sessionmaker[Session] = request.app.state.write_sessions if write else request.app.state.sessions
    with sessions() as session:
        yield session


# --8<-- [start:get-db]
def get_db(request: Request) -> Iterator[Session]:
    """One session per request, closed after it (the FastAPI tutorial's `get_db`).

    On SQLite a request that changes data takes the write lock at its first statement, as
    asgi_todo does: upgrading a read transaction later fails at once ("database is locked")
    when another connection committed in between.
    """
    yield from _sessions(request, write=request.method in _WRITES)


# --8<-- [end:get-db]


def get_read_db(request: Request) -> Iterator[Session]:
    """For the token endpoint: a POST that only reads, and must not hold a write lock over bcrypt."""
    yield from _sessions(request, write=False)


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TokenDep = Annotated[str, Depends(oauth2_scheme)]


# --8<-- [start:current-user]
def get_current_user(request: Request, db: SessionDep, token: TokenDep) -> User:
    invalid = HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid authentication credentials", headers=_BEARER)
    codec: security.TokenCodec = request.app.state.tokens
    try:
        claims = codec.decode(token)
    except security.InvalidToken:
        raise invalid from None
    user = db.get(User, claims.user_id)
    if user is None:
        raise invalid
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
# --8<-- [end:current-user]


def get_current_superuser(user: CurrentUser) -> User:
    if not user.is_superuser:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "The user doesn't have enough privileges")
    return user


SuperUser = Annotated[User, Depends(get_current_superuser)]
TodoId = Annotated[int, Path(alias="id", ge=1, le=INT_MAX)]
UserId = Annotated[int, Path(alias="id", ge=1, le=INT_MAX)]


# Service


service = APIRouter(tags=["service"])


@service.get("/", response_model=Message)
def root(settings: SettingsDep) -> dict[str, str]:
    return {"msg": f"{NAME} {__version__}: the API is under {settings.api_prefix}, its docs at /docs"}


@service.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(db: SessionDep) -> Any:
    try:
        db.execute(text("SELECT 1"))
    except OperationalError:
        return JSONResponse({"name": NAME, "version": __version__, "database": "unavailable"}, 503)
    return {"name": NAME, "version": __version__, "database": "ok"}


# Auth


auth = APIRouter(prefix="/auth", tags=["auth"])


# --8<-- [start:login]
@auth.post("/token", response_model=Token)
def login(
    request: Request,
    response: Response,
    form_data: Annotated[OAuth2PasswordRequestForm, Depends()],
    db: Annotated[Session, Depends(get_read_db)],
) -> dict[str, Any]:
    user = db.scalar(select(User).where(User.email == form_data.username.lower()))
    # An unknown email costs a bcrypt check too, so the answer's timing does not tell.
    hashed = user.hashed_password if user is not None else request.app.state.dummy_hash
    if not security.verify_password(form_data.password, hashed) or user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Incorrect email or password", headers=_BEARER)
    codec: security.TokenCodec = request.app.state.tokens
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return {"access_token": codec.issue(user.id), "token_type": "bearer", "expires_in": codec.ttl_seconds}


# --8<-- [end:login]


@auth.get("/me", response_model=UserRead)
def read_me(user: CurrentUser) -> User:
    return user


# Users


users = APIRouter(prefix="/users", tags=["users"])
_EMAIL_TAKEN = "Email already registered."


@users.post("/signup", response_model=UserRead, status_code=status.HTTP_201_CREATED)
def signup(data: UserCreate, db: SessionDep, settings: SettingsDep, response: Response) -> User:
    # Hash before the first statement: on SQLite that statement takes the write lock.
    hashed = security.hash_password(data.password, rounds=settings.bcrypt_rounds)
    if db.scalar(select(User.id).where(User.email == data.email)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, _EMAIL_TAKEN)
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
    db.add(user)
    try:
        db.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, _EMAIL_TAKEN) from None
    db.refresh(user)
    response.headers["Location"] = f"{settings.api_prefix}/users/{user.id}"
    return user


@users.get("/", response_model=list[UserRead])
def read_users(db: SessionDep, user: SuperUser, page: Annotated[Page, Query()], response: Response) -> Sequence[User]:
    response.headers["X-Total-Count"] = str(db.scalar(select(func.count()).select_from(User)) or 0)
    return db.scalars(select(User).order_by(User.id).offset(page.offset).limit(page.limit)).all()


@users.get("/{id}", response_model=UserReadNested)
def read_user(user_id: UserId, db: SessionDep, user: CurrentUser) -> User:
    if user_id != user.id and not user.is_superuser:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    found = db.get(User, user_id, options=[selectinload(User.todos)], populate_existing=True)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    return found


# Todos


todos = APIRouter(prefix="/todos", tags=["todos"])


def _own_todo(db: Session, user: User, todo_id: int, *, change: bool = False) -> Todo:
    """Fetch it or 404, and is it yours? A superuser may read anyone's, change only their own.

    A todo about to change is locked first (as asgi_todo does): two writers then take turns.
    """
    if change:
        todo = db.get(Todo, todo_id, with_for_update=True)
    else:
        todo = db.get(Todo, todo_id, options=[joinedload(Todo.owner)])
    if todo is None or (todo.owner_id != user.id and (change or not user.is_superuser)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Todo not found")
    return todo


@todos.get("/", response_model=list[TodoRead])
def read_todos(
    db: SessionDep, user: CurrentUser, filters: Annotated[TodoFilter, Query()], response: Response
) -> Sequence[Todo]:
    owner_id = filters.user_id
    if owner_id is not None and owner_id != user.id and not user.is_superuser:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Not allowed to list another user's todos")
    if owner_id is None and not user.is_superuser:
        owner_id = user.id
    where: list[ColumnElement[bool]] = []
    if owner_id is not None:
        where.append(Todo.owner_id == owner_id)
    if filters.completed is not None:
        where.append(Todo.completed == filters.completed)
    response.headers["X-Total-Count"] = str(db.scalar(select(func.count()).select_from(Todo).where(*where)) or 0)
    query = select(Todo).where(*where).order_by(Todo.id).offset(filters.offset).limit(filters.limit)
    return db.scalars(query).all()


# --8<-- [start:create]
@todos.post("/", response_model=TodoRead, status_code=status.HTTP_201_CREATED)
def create_todo(data: TodoCreate, db: SessionDep, user: CurrentUser, settings: SettingsDep, response: Response) -> Todo:
    now = utcnow()
    todo = Todo(
        text=data.text,
        completed=data.completed,
        due_date=data.due_date,
        owner_id=user.id,
        created_at=now,
        updated_at=now,
    )
    db.add(todo)
    db.commit()
    db.refresh(todo)
    response.headers["Location"] = f"{settings.api_prefix}/todos/{todo.id}"
    return todo


# --8<-- [end:create]


@todos.get("/{id}", response_model=TodoReadNested)
def read_todo(todo_id: TodoId, db: SessionDep, user: CurrentUser) -> Todo:
    return _own_todo(db, user, todo_id)


def _update(db: Session, user: User, todo_id: int, changes: dict[str, Any]) -> Todo:
    todo = _own_todo(db, user, todo_id, change=True)
    for name, value in changes.items():
        setattr(todo, name, value)
    todo.updated_at = utcnow()  # the contract: every update changes it, even to the same values
    db.commit()
    db.refresh(todo)
    return todo


@todos.put("/{id}", response_model=TodoRead)
def replace_todo(todo_id: TodoId, data: TodoReplace, db: SessionDep, user: CurrentUser) -> Todo:
    if data.id is not None and data.id != todo_id:
        error = {"type": "value_error", "loc": ("body", "id"), "msg": "id must match the id in the path"}
        raise RequestValidationError([error])
    return _update(
        db, user, todo_id, data.model_dump(include={"text", "completed"} | ({"due_date"} & data.model_fields_set))
    )


@todos.patch("/{id}", response_model=TodoRead)
def update_todo(todo_id: TodoId, data: TodoPatch, db: SessionDep, user: CurrentUser) -> Todo:
    return _update(db, user, todo_id, data.model_dump(exclude_unset=True))


@todos.delete("/{id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_todo(todo_id: TodoId, db: SessionDep, user: CurrentUser) -> None:
    db.delete(_own_todo(db, user, todo_id, change=True))
    db.commit()


# Errors: FastAPI's own bodies, but a 422 never echoes the input and a 500 is JSON.


def _issue(error: dict[str, Any]) -> dict[str, Any]:
    issue: dict[str, Any] = {"type": error["type"], "loc": list(error["loc"]), "msg": _short(str(error["msg"]))}
    if error.get("ctx"):
        issue["ctx"] = {key: v if isinstance(v, int | float) else _short(str(v)) for key, v in error["ctx"].items()}
    return issue


def _short(value: str) -> str:
    return value if len(value) <= _MSG_MAX else value[: _MSG_MAX - 3] + "..."


# --8<-- [start:validation-error]
async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": [_issue(error) for error in exc.errors()]}, status.HTTP_422_UNPROCESSABLE_CONTENT)


# --8<-- [end:validation-error]


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "Internal Server Error"}, status.HTTP_500_INTERNAL_SERVER_ERROR)


async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    given = request.headers.get("x-request-id", "")
    response = await call_next(request)
    response.headers["X-Request-ID"] = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    return response


# The app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    prepare(settings, start=start_id())  # RESET_DB / UPDATE_DB, as asgi_todo does
    database = Database(settings)
    try:
        check_schema(database)
        key = secret_key(settings, database)
    finally:
        database.close()
    engine = make_engine(settings, pool_size=POOL_SIZE)
    app.state.sessions = sessionmaker(engine, autoflush=False)
    app.state.write_sessions = sessionmaker(engine.execution_options(sqlite_immediate=True), autoflush=False)
    app.state.tokens = security.TokenCodec(key, settings.access_token_expire_minutes * 60)
    app.state.dummy_hash = security.hash_password(security.new_secret_key()[:16], rounds=settings.bcrypt_rounds)
    try:
        yield
    finally:
        engine.dispose()


# --8<-- [start:create-app]
def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(title=NAME, version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(service)
    for router in (auth, users, todos):
        app.include_router(router, prefix=settings.api_prefix)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)
    app.middleware("http")(request_id)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Total-Count", "Location"],
            allow_credentials="*" not in settings.cors_origins,
        )
    return app


# --8<-- [end:create-app]
