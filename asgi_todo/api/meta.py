"""The service itself: a greeting and the health check."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .. import __version__
from ..errors import ServiceUnavailable
from ..operations import Call, Operation, Reply
from ..schemas import Health, Message

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


OPERATIONS = [
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
]
