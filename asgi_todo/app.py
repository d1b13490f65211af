"""create_app(settings) -> Starlette: routes, middleware, error handlers, lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from . import db, docs, lockout, logs, middleware, openapi, startup
from .api import OPERATIONS
from .auth import Passwords, current_user
from .context import Services
from .errors import error_response
from .operations import routes
from .security import TokenCodec
from .settings import ConfigError, Settings, load_settings, refuse


def create_app(settings: Settings | None = None) -> Starlette:
    """The application. Servers call this factory with no argument: settings then come
    from the environment, and a bad value exits with one line naming the variable."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            refuse(exc)
        if not logging.getLogger().handlers:  # a bare `uvicorn --factory`: give our logs a home
            logs.configure(level=settings.log_level, log_format=settings.log_format)
    return Starlette(
        routes=[
            *routes(OPERATIONS, prefix=settings.api_prefix, load_user=current_user),
            *openapi.routes(settings, OPERATIONS),
            *docs.routes(),
        ],
        middleware=_middleware(settings),
        exception_handlers={HTTPException: _http_error},
        lifespan=partial(_lifespan, settings=settings),
    )


def _middleware(settings: Settings) -> list[Middleware]:
    stack = [Middleware(middleware.RequestId), Middleware(middleware.SecurityHeaders), Middleware(middleware.Errors)]
    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        stack.append(
            Middleware(
                middleware.Cors,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID", "If-Match", "If-None-Match"],
                expose_headers=["X-Request-ID", "X-Total-Count", "Location", "ETag", "Retry-After"],
                allow_credentials=not wildcard,  # never "*" together with credentials
            )
        )
    stack += [
        Middleware(middleware.BodyLimit, max_bytes=settings.max_body_bytes),
        Middleware(middleware.SessionScope),
        Middleware(middleware.BearerDecode),
    ]
    return stack


def _http_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


@asynccontextmanager
async def _lifespan(app: Starlette, *, settings: Settings) -> AsyncIterator[dict[str, Any]]:
    startup.prepare(settings, start=startup.start_id())
    database = db.Database(settings)
    passwords: Passwords | None = None
    try:
        startup.check_schema(database)
        key = startup.secret_key(settings, database)
        passwords = Passwords(rounds=settings.bcrypt_rounds)
        tokens = TokenCodec(key, settings.access_token_expire_minutes * 60)
        limits = lockout.Limits(
            per_account=settings.login_max_failures,
            per_client=settings.login_max_failures_per_client,
            lock_seconds=settings.login_lock_seconds,
            lock_max_seconds=settings.login_lock_max_seconds,
        )
        yield {"services": Services(settings, database, tokens, passwords, limits)}
    finally:
        if passwords is not None:
            passwords.close()
        database.close()
