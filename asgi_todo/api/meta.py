"""The service itself: a greeting, the health check, and the probes (liveness, readiness)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .. import __version__
from ..errors import ServiceUnavailable
from ..operations import Call, Operation, Reply
from ..schemas import Health, Liveness, Message, Readiness

NAME = "asgi_todo"


async def root_endpoint(call: Call) -> Message:
    return Message(msg=f"{NAME} {__version__}: the API is under {call.services.settings.api_prefix}, its docs at /docs")


def _ping(session: Session) -> None:
    session.connection().exec_driver_sql("SELECT 1")


async def health_endpoint(call: Call) -> Reply:
    try:
        await call.read(_ping)
    except ServiceUnavailable:
        return Reply(Health(name=NAME, version=__version__, database="unavailable"), status=503)
    return Reply(Health(name=NAME, version=__version__, database="ok"))


async def live_endpoint(call: Call) -> Liveness:
    # Answered on the event loop without the database: a database outage must not make a
    # platform restart every replica.
    return Liveness()


_NOT_READY = Readiness(status="not_ready", detail="not ready: the reason is in the service's log")


async def ready_endpoint(call: Call) -> Reply:
    # Draining is this process's own state (drain.py logs it); the database's is checked
    # at most once per READY_CACHE_SECONDS (readiness.py logs it).
    if call.services.drain.draining or not (await call.services.readiness.verdict()).ready:
        return Reply(_NOT_READY, status=503)
    return Reply(Readiness(status="ready"))


OPERATIONS: list[Operation] = [
    Operation(
        method="GET",
        path="/",
        name="root",
        tag="service",
        summary="Greeting",
        handler=root_endpoint,
        response=Message,
        prefixed=False,
    ),
    Operation(
        method="GET",
        path="/health",
        name="health",
        tag="service",
        summary="Health check",
        description='200 with `"database": "ok"`, or 503 with `"database": "unavailable"`.',
        handler=health_endpoint,
        response=Health,
        replies=(503,),
        prefixed=False,
    ),
    Operation(
        method="GET",
        path="/livez",
        name="liveness",
        tag="service",
        summary="Liveness probe",
        description="200 while the process and its event loop answer. Never asks the database: "
        "restart the process when this fails, not when the database is away.",
        handler=live_endpoint,
        response=Liveness,
        prefixed=False,
    ),
    Operation(
        method="GET",
        path="/readyz",
        name="readiness",
        tag="service",
        summary="Readiness probe",
        description="200 when this process should get traffic: the database answers, holds the schema "
        "this code needs, and the process is not stopping. 503 otherwise: a load balancer takes the "
        "replica out of rotation and puts it back when it answers 200. The reason is in the service's "
        "log, not in the answer. The database is checked at most once per READY_CACHE_SECONDS.",
        handler=ready_endpoint,
        response=Readiness,
        replies=(503,),
        prefixed=False,
    ),
]
