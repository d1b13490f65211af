"""The database half of `GET /readyz`: at most one check per process per READY_CACHE_SECONDS.

A platform probes every replica every few seconds, a load balancer several times a second,
and each check reads the schema's state (several statements): unthrottled, the probes are a
load of their own on the database. Here a verdict is kept for READY_CACHE_SECONDS, and probes
that arrive while a check runs wait for that one check (docs: Behind a proxy, Probes behind a
balancer).

The reason a replica is not ready goes to the log (once each time it changes), never to the
caller: it names revisions and commands. `asgi-todo db check` says the same on a terminal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from .db import Database
from .errors import ServiceUnavailable
from .startup import schema_problem

logger = logging.getLogger("asgi_todo.readiness")

UNREACHABLE = "the database cannot be reached"


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    reason: str = ""  # why not, in words: for the log


class ReadyCheck:
    """The latest verdict of the database check, at most `cache_seconds` old."""

    def __init__(self, database: Database, *, cache_seconds: float) -> None:
        self._database = database
        self._cache_seconds = cache_seconds
        self._last: tuple[float, Verdict] | None = None  # (when the check ended, its verdict)
        self._running: asyncio.Task[Verdict] | None = None
        self._logged = Verdict(True)

    async def verdict(self) -> Verdict:
        last = self._last
        if last is not None and time.monotonic() - last[0] < self._cache_seconds:
            return last[1]
        if self._running is None:
            # A task of its own, with its own session: a probe that goes away mid-check
            # cancels only its wait (shield), not the check the others are waiting for.
            self._running = asyncio.get_running_loop().create_task(self._check())
            self._running.add_done_callback(self._checked)
        return await asyncio.shield(self._running)

    def _checked(self, task: asyncio.Task[Verdict]) -> None:
        self._running = None
        if not task.cancelled():
            task.exception()  # raised to the waiters, if any; never "never retrieved"

    async def _check(self) -> Verdict:
        try:
            with self._database.sessions() as session:
                problem = await self._database.read(session, _schema_problem)
        except ServiceUnavailable:
            verdict = Verdict(False, UNREACHABLE)
        else:
            verdict = Verdict(problem is None, problem or "")
        self._last = (time.monotonic(), verdict)
        self._log(verdict)
        return verdict

    def _log(self, verdict: Verdict) -> None:
        if verdict == self._logged:
            return
        self._logged = verdict
        if verdict.ready:
            logger.info("ready again")
        else:
            logger.warning("not ready: %s", verdict.reason)


READ_ONLY = "the database is read-only (a standby, or a primary being demoted): no writable primary reached"


def _schema_problem(session: Session) -> str | None:
    connection = session.connection()
    # Behind a failover manager the server reached may be a standby or a demoted primary: it
    # answers reads but refuses every write, so this process should get no traffic until it
    # reaches the new primary (docs: High availability).
    if (
        connection.dialect.name == "postgresql"
        and connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
    ):
        return READ_ONLY
    return schema_problem(connection)
