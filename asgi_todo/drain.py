"""A graceful stop that a load balancer can see coming.

On SIGTERM the process first says it is not ready (`GET /readyz` answers 503) and keeps
serving everything else for DRAIN_SECONDS, long enough for a balancer's health checks to
take it out of rotation; only then does uvicorn stop listening and let the requests it
accepted finish. A second SIGTERM, or SIGINT (Ctrl-C), stops at once, as uvicorn does.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

logger = logging.getLogger("asgi_todo.drain")


class Drain:
    """Whether this process has begun to stop. One per process (`PROCESS`): a signal is."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since: float | None = None

    @property
    def draining(self) -> bool:
        return self._since is not None

    def begin(self) -> None:
        if self._since is None:
            self._since = time.monotonic()


PROCESS = Drain()


class Server(uvicorn.Server):
    """uvicorn's server, which on the first SIGTERM drains for `drain_seconds` before it
    stops. The signal is handled here, not re-raised after the stop (as uvicorn does), so
    the process exits with 0."""

    def __init__(self, config: uvicorn.Config, *, drain_seconds: int, drain: Drain = PROCESS) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.drain = drain
        self._stop_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._stop_at is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.drain.begin()
        self._stop_at = time.monotonic() + self.drain_seconds
        logger.info("SIGTERM: not ready any more; stopping in %g s", self.drain_seconds)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)
