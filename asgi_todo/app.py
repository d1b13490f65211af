"""create_app(settings) -> Starlette: routes, middleware, error handlers, lifespan."""

from __future__ import annotations

import asyncio
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
from starlette.routing import Route

from . import db, docs, lockout, logs, metrics, middleware, openapi, startup
from .api import OPERATIONS
from .auth import Passwords, current_user
from .context import Services
from .drain import PROCESS, Drain
from .errors import error_response
from .operations import routes
from .readiness import ReadyCheck
from .security import TokenCodec
from .settings import ConfigError, Settings, load_settings, refuse


# --8<-- [start:create-app]
def create_app(settings: Settings | None = None, *, drain: Drain = PROCESS) -> Starlette:
    """The application. Servers call this factory with no argument: settings then come
    from the environment, and a bad value exits with one line naming the variable.
    `drain` says when the process is stopping (`GET /readyz`); tests give their own."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            refuse(exc)
        if not logging.getLogger().handlers:  # a bare `uvicorn --factory`: give our logs a home
            logs.configure(level=settings.log_level, log_format=settings.log_format)
    app_routes = [
        *routes(OPERATIONS, prefix=settings.api_prefix, load_user=current_user),
        *openapi.routes(settings, OPERATIONS),
        *docs.routes(),
    ]
    observed: metrics.Metrics | None = None
    if settings.metrics:
        observed = metrics.Metrics(database_kind="sqlite" if settings.is_sqlite else "postgresql")
        exposition = metrics.Exposition(observed, port=settings.metrics_port, allow=settings.metrics_allow_ips)
        observed.track(app_routes)
        app_routes = [*app_routes, Route("/metrics", exposition, methods=["GET"])]
    stack = _middleware(settings, observed)
    if observed is not None and settings.metrics_port is not None:
        stack.insert(0, Middleware(metrics.MetricsPortGuard, port=settings.metrics_port))
    if settings.tracing:
        from . import tracing  # the optional extra: nothing of OpenTelemetry is imported without it

        stack = [*tracing.middleware(), *stack]
    return Starlette(
        routes=app_routes,
        middleware=stack,
        exception_handlers={HTTPException: _http_error},
        lifespan=partial(_lifespan, settings=settings, drain=drain, observed=observed),
    )


# --8<-- [end:create-app]


def _middleware(settings: Settings, observed: metrics.Metrics | None) -> list[Middleware]:
    stack = [
        Middleware(middleware.ClientAddress, untrusted=None if observed is None else observed.forwarded_untrusted),
        Middleware(middleware.RequestId, observe=observed),
        Middleware(middleware.SecurityHeaders),
        Middleware(middleware.Errors),
    ]
    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        stack.append(
            Middleware(
                middleware.Cors,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "X-Request-ID",
                    "If-Match",
                    "If-None-Match",
                    "Idempotency-Key",
                ],
                expose_headers=[
                    "X-Request-ID",
                    "X-Total-Count",
                    "Link",
                    "Location",
                    "ETag",
                    "Retry-After",
                    "Idempotent-Replayed",
                ],
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
async def _lifespan(
    app: Starlette, *, settings: Settings, drain: Drain, observed: metrics.Metrics | None
) -> AsyncIterator[dict[str, Any]]:
    startup.prepare(settings, start=startup.start_id())
    database = db.Database(settings)
    passwords: Passwords | None = None
    sampler: asyncio.Task[None] | None = None
    try:
        startup.check_schema(database)
        key = startup.secret_key(settings, database)
        passwords = Passwords(rounds=settings.bcrypt_rounds)
        if observed is not None:
            observed.watch(
                engine=database.engine, waiting=database.connecting, sql=database.queued, bcrypt=passwords.queued
            )
            sampler = asyncio.create_task(observed.sample_every(1.0))
        if settings.tracing:
            from . import tracing

            tracing.instrument(database.engine)
        tokens = TokenCodec(key, settings.access_token_expire_minutes * 60)
        limits = lockout.Limits(
            per_account=settings.login_max_failures,
            per_client=settings.login_max_failures_per_client,
            lock_seconds=settings.login_lock_seconds,
            lock_max_seconds=settings.login_lock_max_seconds,
            signups_per_client=settings.signup_max_per_client,
            signup_window_seconds=settings.signup_window_seconds,
        )
        readiness = ReadyCheck(database, cache_seconds=settings.ready_cache_seconds)
        yield {"services": Services(settings, database, tokens, passwords, limits, drain, readiness, observed)}
    finally:
        if sampler is not None:
            sampler.cancel()
        if observed is not None:
            await observed.close()
        if passwords is not None:
            passwords.close()
        database.close()
