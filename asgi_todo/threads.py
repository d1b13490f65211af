"""A few named threads that run blocking calls (SQL, bcrypt) for the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[contextvars.Context, Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]]


class Threads:
    """`await threads.run(call)` runs call() on one of `count` threads, in the caller's context
    (so logs there carry the request id), and resumes the caller with its result or exception.

    It does what `loop.run_in_executor(ThreadPoolExecutor(...), ...)` does, with less per
    call: one queue put, and one `call_soon_threadsafe` back. The executor also builds a
    concurrent Future with its Condition and chains an asyncio Future to it, all under the
    GIL that the event loop needs; on the request path that was 9-16% of requests/s.
    A cancelled caller does not stop a call already queued; its result is dropped.
    """

    def __init__(self, count: int, *, name: str) -> None:
        # Daemon threads: a process that exits without calling close() is not held up by them.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def queued(self) -> int:
        """Calls waiting for a thread now (approximate; metrics sample it)."""
        return self._jobs.qsize()

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((contextvars.copy_context(), call, loop, future))
        return await future

    def close(self) -> None:
        """Let queued calls finish, then stop the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            _run(*job)
            del job  # hold nothing of a finished call while waiting for the next


def _run(
    context: contextvars.Context, call: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
) -> None:
    try:
        outcome: tuple[Any, BaseException | None] = (context.run(call), None)
    except BaseException as exc:
        outcome = (None, exc)
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
