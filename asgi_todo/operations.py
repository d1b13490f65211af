"""One declaration per operation, and the glue that turns it into a validating ASGI endpoint.

An `Operation` names its request models (path, query, body or form), its response model,
status and auth need once; `Endpoint` reads it to validate requests and serialise replies,
and `openapi.py` reads the same object to write the document.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from typing_extensions import TypeVar

from . import idempotency
from .auth import Principal
from .context import BEARER, SESSION, Services, client_key, request_header, require_claims
from .errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed, validation_issue
from .security import Claims

T = TypeVar("T")
# A data function's arguments after the session (and the caller): keyword-only, by the style.
Args = ParamSpec("Args")
# What a handler receives, as its operation declares it: path parameters, query, body (or form).
# None where the operation declares none; a bare `Operation` accepts any.
P = TypeVar("P", default=None)
Q = TypeVar("Q", default=None)
B = TypeVar("B", default=None)
AnyP = TypeVar("AnyP", default=Any)
AnyQ = TypeVar("AnyQ", default=Any)
AnyB = TypeVar("AnyB", default=Any)
M = TypeVar("M", bound=BaseModel)

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class LoadUser(Protocol):
    """Loads the caller named by the token in the request's unit of work (auth.current_user)."""

    def __call__(self, session: Session, claims: Claims, /, *, superuser: bool, keep: bool) -> Principal: ...


class Auth(enum.Enum):
    NONE = "none"
    USER = "user"
    SUPERUSER = "superuser"


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer when the status or headers differ from the declaration."""

    value: Any = None
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Operation(Generic[AnyP, AnyQ, AnyB]):
    """One operation, declared once. mypy checks that the handler takes the declared inputs:
    `params=ById, body=TodoPatch` goes with `handler(call: Call[ById, None, TodoPatch])`."""

    method: Method
    path: str  # below API_PREFIX unless `prefixed` is false
    name: str  # the operationId
    tag: str
    summary: str
    handler: Callable[[Call[AnyP, AnyQ, AnyB]], Awaitable[Any]]
    status: int = 200
    auth: Auth = Auth.NONE
    params: type[AnyP] | None = None
    query: type[AnyQ] | None = None
    body: type[AnyB] | None = None
    body_required: bool = True  # false: no body at all is fine too, and the handler gets None
    form: Any = None  # a model, or a union of models (the token form's grants); the handler's Call says which
    response: Any = None
    errors: tuple[int, ...] = ()  # answered with an error body (ErrorMessage; 422: ValidationErrorBody)
    replies: tuple[int, ...] = ()  # other statuses the handler answers with `response` itself, via Reply
    headers: Mapping[str, str] = field(default_factory=dict)  # response headers: name -> description
    request_headers: Mapping[str, str] = field(default_factory=dict)  # optional request headers it reads
    description: str = ""
    prefixed: bool = True
    # Honours Idempotency-Key (idempotency.py): the handler's write that returns its Reply
    # stores that reply, rendered, with the key in the same transaction.
    idempotent: bool = False

    def __post_init__(self) -> None:
        if self.idempotent:  # what honouring Idempotency-Key adds to the declaration
            object.__setattr__(self, "errors", tuple(sorted({*self.errors, *idempotency.ERRORS})))
            object.__setattr__(
                self, "headers", {**self.headers, idempotency.REPLAYED: idempotency.REPLAYED_DESCRIPTION}
            )
            request_headers = {**self.request_headers, idempotency.HEADER: idempotency.HEADER_DESCRIPTION}
            object.__setattr__(self, "request_headers", request_headers)

    def full_path(self, prefix: str) -> str:
        return prefix + self.path if self.prefixed else self.path


_CURSOR = ("after_id", "offset", "limit")  # the query parameters a next page's Link sets anew


class Call(Generic[P, Q, B]):
    """One request as the handler sees it: validated inputs, typed as its operation declares
    them (`Call[ById, None, TodoPatch]`), and the database."""

    __slots__ = (
        "_load_user",
        "_session",
        "body",
        "claims",
        "idempotency",
        "operation",
        "params",
        "query",
        "request_scope",
        "services",
    )

    def __init__(
        self,
        operation: Operation,
        scope: Scope,
        claims: Claims | None,
        load_user: LoadUser,
        *,
        params: P,
        query: Q,
        body: B,
    ) -> None:
        self.operation = operation
        self._load_user = load_user
        self.request_scope = scope
        self.services: Services = scope["state"]["services"]
        self._session: Session = scope[SESSION]
        self.claims = claims
        self.params = params
        self.query = query
        self.body = body
        self.idempotency: idempotency.Keyed | None = None  # the request's Idempotency-Key, if it sent one

    @property
    def client_address(self) -> str:
        """The client as the per-client limits and familiar addresses know it: the address
        (a trusted proxy's X-Forwarded-For, FORWARDED_ALLOW_IPS), an IPv6 one by its /64."""
        client = self.request_scope.get("client")
        return client_key(str(client[0])) if client else "unknown"

    def page_headers(self, *, after: int | None, limit: int, total: int | None) -> dict[str, str]:
        return page_headers(self.request_scope, after=after, limit=limit, total=total)

    def header(self, name: bytes) -> str | None:
        """A request header (name in lower case), or None."""
        value = request_header(self.request_scope, name)
        return None if value is None else value.decode("latin-1")

    async def read(self, fn: Callable[Concatenate[Session, Args], T], /, *args: Args.args, **kwargs: Args.kwargs) -> T:
        """fn(session, **kwargs) off the event loop (db.Database.read); mypy checks the
        arguments against fn's signature."""
        return await self.services.db.read(self._session, fn, *args, **kwargs)

    async def write(self, fn: Callable[Concatenate[Session, Args], T], /, *args: Args.args, **kwargs: Args.kwargs) -> T:
        """fn(session, **kwargs) in one transaction, off the event loop (db.Database.write)."""
        return await self.services.db.write(self._session, self._storing(fn), *args, **kwargs)

    async def read_as_user(
        self, fn: Callable[Concatenate[Session, Principal, Args], T], /, *args: Args.args, **kwargs: Args.kwargs
    ) -> T:
        """fn(session, <the caller>, **kwargs): the caller is loaded in the same transaction,
        so a request costs one thread hop, not two."""
        return await self.services.db.read(self._session, self._as_user(fn, keep=False), *args, **kwargs)

    async def write_as_user(
        self, fn: Callable[Concatenate[Session, Principal, Args], T], /, *args: Args.args, **kwargs: Args.kwargs
    ) -> T:
        """Like read_as_user, in one transaction that keeps the caller's row until it commits."""
        return await self.services.db.write(self._session, self._storing(self._as_user(fn, keep=True)), *args, **kwargs)

    def _storing(self, fn: Callable[Concatenate[Session, Args], T]) -> Callable[Concatenate[Session, Args], T]:
        """fn, after claiming the request's Idempotency-Key in its transaction, storing its
        Reply with the key (idempotency.py)."""
        keyed = self.idempotency
        if keyed is None:
            return fn

        def storing(session: Session, /, *args: Args.args, **kwargs: Args.kwargs) -> T:
            keyed.claim(session)
            result = fn(session, *args, **kwargs)
            if isinstance(result, Reply):
                keyed.store(session, result)
            else:
                keyed.hold(session)
            return result

        return storing

    def _as_user(
        self, fn: Callable[Concatenate[Session, Principal, Args], T], *, keep: bool
    ) -> Callable[Concatenate[Session, Args], T]:
        claims, load_user = self.claims, self._load_user
        if claims is None:
            raise TypeError(f"operation {self.operation.name} declares no auth: it has no user")
        superuser = self.operation.auth is Auth.SUPERUSER

        def as_user(session: Session, /, *args: Args.args, **kwargs: Args.kwargs) -> T:
            return fn(session, load_user(session, claims, superuser=superuser, keep=keep), *args, **kwargs)

        return as_user


def page_headers(scope: Scope, *, after: int | None, limit: int, total: int | None) -> dict[str, str]:
    """A list's headers: `Link` to the next page when there is one, which starts after id
    `after` (this request's path and query, that cursor, from offset 0), `X-Total-Count`
    when counted."""
    headers = {}
    if after is not None:
        raw = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        kept = [(name, value) for name, value in raw if name not in _CURSOR]
        query = urlencode([("after_id", after), ("limit", limit), *kept])
        headers["Link"] = f'<{scope["path"]}?{query}>; rel="next"'
    if total is not None:
        headers["X-Total-Count"] = str(total)
    return headers


# A request whose inputs the function does not read (the account service, shared helpers).
AnyCall = Call[Any, Any, Any]


# --8<-- [start:endpoint]
class Endpoint:
    """The validation glue: an ASGI app for one operation."""

    def __init__(self, operation: Operation, load_user: LoadUser) -> None:
        self.operation = operation
        self._load_user = load_user
        self._response = TypeAdapter(operation.response) if operation.response is not None else None
        self._form = TypeAdapter(operation.form) if operation.form is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = self.operation
        claims = require_claims(scope.get(BEARER)) if operation.auth is not Auth.NONE else None
        key = idempotency.request_key(scope) if operation.idempotent else None
        params = query = body = None
        raw = b""
        if operation.params is not None:
            params = _validate(operation.params.model_validate, scope["path_params"], "path")
        if operation.query is not None:
            raw_query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            query = _validate(operation.query.model_validate, raw_query, "query")
        if operation.body is not None:
            raw = await _read_json(scope, receive)
            if raw.strip() or operation.body_required:
                body = _validate_json(operation.body, raw)
        elif self._form is not None:
            body = _validate(self._form.validate_python, await _read_form(scope, receive), "body")
        call = Call(operation, scope, claims, self._load_user, params=params, query=query, body=body)
        if key is not None:
            call.idempotency = idempotency.keyed(call, key=key, body=raw, render=self._render)
        try:
            result = await operation.handler(call)
        except idempotency.Replayed as replayed:
            await replayed.stored.response()(scope, receive, send)
            return
        except Exception as exc:
            await idempotency.release_for(call, exc)
            raise
        if call.idempotency is None:
            await self._render(result)(scope, receive, send)
            return
        if call.idempotency.response is None:
            raise RuntimeError(f"{operation.name}: no write returned its Reply, so none stored it with its key")
        idempotency.after_commit()
        await call.idempotency.response(scope, receive, send)

    def _render(self, result: Any) -> Response:
        reply = result if isinstance(result, Reply) else Reply(result)
        status = reply.status or self.operation.status
        headers = dict(reply.headers)
        if self._response is None or status in (204, 304):
            return Response(status_code=status, headers=headers)
        value = self._response.validate_python(reply.value, from_attributes=True)
        return Response(self._response.dump_json(value), status, headers, media_type="application/json")


# --8<-- [end:endpoint]


# --8<-- [start:validate]
def _validate(validate: Callable[[Any], T], data: Mapping[str, Any], source: str) -> T:
    try:
        return validate(data)
    except ValidationError as exc:
        raise _failed(exc, source) from None


def _validate_json(model: type[M], raw: bytes) -> M:
    if not raw.strip():
        raise ValidationFailed([validation_issue("missing", ["body"], "Field required")])
    try:
        # Strict: JSON has real types, so `"completed": 0` or `"yes"` is a 422, as the
        # document's `boolean` says, not a quiet False/True. Strings from a path, query or
        # form are parsed leniently instead (_validate).
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _failed(exc, "body") from None


def _failed(exc: ValidationError, source: str) -> ValidationFailed:
    return ValidationFailed.from_pydantic(exc.errors(include_url=False, include_input=False), source=source)


# --8<-- [end:validate]


async def _read_json(scope: Scope, receive: Receive) -> bytes:
    media_type = _media_type(scope)
    if media_type and not (media_type == "application/json" or media_type.endswith("+json")):
        raise UnsupportedMediaType()
    return await Request(scope, receive).body()


async def _read_form(scope: Scope, receive: Receive) -> dict[str, Any]:
    media_type = _media_type(scope)
    if media_type not in ("", "application/x-www-form-urlencoded", "multipart/form-data"):
        raise UnsupportedMediaType("Unsupported Media Type: send application/x-www-form-urlencoded")
    request = Request(scope, receive)
    if not media_type:
        await request.body()
        return {}
    try:
        form = await request.form(max_files=0, max_fields=20)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # starlette raises its HTTPException (400) for a malformed form
        reason = str(getattr(exc, "detail", exc))[:100]
        raise ValidationFailed([validation_issue("form_invalid", ["body"], reason)]) from None
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _media_type(scope: Scope) -> str:
    value = request_header(scope, b"content-type") or b""
    return value.decode("latin-1").split(";", 1)[0].strip().lower()


class _ByMethod:
    """The operations on one path. Routing by path first, then by method, means a path
    that exists answers any other method with a 405 whose `Allow` lists all of its methods,
    even when a later `{id}` path would match the same URL (`GET /users/signup`)."""

    def __init__(self, endpoints: Mapping[str, Endpoint]) -> None:
        self.endpoints = dict(endpoints)
        if "GET" in self.endpoints:
            self.endpoints.setdefault("HEAD", self.endpoints["GET"])
        self.allow = ", ".join(self.endpoints)
        self.methods = frozenset(self.endpoints)  # what the metrics label by (metrics.served_methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["method"])
        if endpoint is None:
            raise HTTPException(405, headers={"Allow": self.allow})
        await endpoint(scope, receive, send)


# --8<-- [start:routes]
def routes(operations: Sequence[Operation], *, prefix: str, load_user: LoadUser) -> list[Route]:
    """A route per path; a collection path with a trailing slash also answers without it.

    `load_user` finds the caller of an operation that needs one (auth.current_user)."""
    paths: dict[str, dict[str, Endpoint]] = {}
    for operation in operations:
        paths.setdefault(operation.full_path(prefix), {})[operation.method] = Endpoint(operation, load_user)
    found: list[Route] = []
    for path, endpoints in paths.items():
        app = _ByMethod(endpoints)
        found.append(Route(path, app, name=path))
        if path.endswith("/") and len(path) > 1:
            found.append(Route(path.rstrip("/"), app, name=path.rstrip("/"), include_in_schema=False))
    return found


# --8<-- [end:routes]
