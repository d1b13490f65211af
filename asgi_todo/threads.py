"""A few named threads that run blocking calls (SQL, bcrypt) for the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class _Job(Generic[T]):
    """One call for a thread: run it in the caller's context, then settle the caller's future
    on its loop."""

    __slots__ = ("call", "context", "future", "loop")

    def __init__(self, call: Callable[[], T], loop: asyncio.AbstractEventLoop, future: asyncio.Future[T]) -> None:
        self.context = contextvars.copy_context()
        self.call, self.loop, self.future = call, loop, future

    def run(self) -> None:
        with contextlib.suppress(RuntimeError):  # from call_soon_threadsafe: the loop is closed, nobody waits
            try:
                result = self.context.run(self.call)
            except BaseException as exc:
                self.loop.call_soon_threadsafe(_fail, self.future, exc)
            else:
                self.loop.call_soon_threadsafe(_resolve, self.future, result)


class _Runnable(Protocol):
    def run(self) -> None: ...


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
        self._jobs: queue.SimpleQueue[_Runnable | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def queued(self) -> int:
        """Calls waiting for a thread now (approximate; metrics sample it)."""
        return self._jobs.qsize()

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(call, loop, future))
        return await future

    def close(self) -> None:
        """Let queued calls finish, then stop the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()
            del job  # hold nothing of a finished call while waiting for the next


def _resolve(future: asyncio.Future[T], result: T) -> None:
    if not future.cancelled():
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(error)
