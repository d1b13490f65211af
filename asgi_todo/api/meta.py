"""The service itself: a greeting, the health check, and the probes (liveness, readiness)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .. import __version__
from ..errors import ServiceUnavailable
from ..operations import Call, Operation, Reply
from ..schemas import Health, Liveness, Message, Readiness
from ..startup import schema_problem

NAME = "asgi_todo"
READ_ONLY = "the database is read-only (a standby, or a primary being demoted): no writable primary reached"


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


def _readiness_problem(session: Session) -> str | None:
    connection = session.connection()
    # Behind a failover manager the server reached may be a standby or a demoted primary:
    # it answers reads but refuses every write, so this process should get no traffic until
    # it reaches the new primary.
    if (
        connection.dialect.name == "postgresql"
        and connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
    ):
        return READ_ONLY
    return schema_problem(connection)


async def ready_endpoint(call: Call) -> Reply:
    if call.services.drain.draining:
        return Reply(Readiness(status="draining", detail="stopping: SIGTERM received"), status=503)
    try:
        problem = await call.read(_readiness_problem)
    except ServiceUnavailable:
        return Reply(Readiness(status="database_unavailable", detail="the database cannot be reached"), status=503)
    if problem == READ_ONLY:
        return Reply(Readiness(status="database_unavailable", detail=READ_ONLY), status=503)
    if problem:
        return Reply(Readiness(status="schema_mismatch", detail=problem), status=503)
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
        "this code needs, and the process is not stopping. 503 otherwise, with the reason: "
        "a load balancer takes the replica out of rotation and puts it back when it answers 200.",
        handler=ready_endpoint,
        response=Readiness,
        replies=(503,),
        prefixed=False,
    ),
]
