"""A few named threads that run blocking calls (SQL, bcrypt) for the event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class _Job(Generic[T]):
    """One call for a thread: run it in the caller's context; then settle the caller's future
    on its loop with the outcome."""

    __slots__ = ("call", "context", "future", "loop")

    def __init__(self, call: Callable[[], T], loop: asyncio.AbstractEventLoop, future: asyncio.Future[T]) -> None:
        self.context = contextvars.copy_context()
        self.call, self.loop, self.future = call, loop, future

    def run(self) -> Callable[[], None]:
        """Run the call; returns what settles its caller's future, for the thread to call."""
        try:
            result = self.context.run(self.call)
        except BaseException as exc:
            return partial(self._settle, _fail, exc)
        return partial(self._settle, _resolve, result)

    def _settle(self, how: Callable[[asyncio.Future[T], Any], None], outcome: object) -> None:
        with contextlib.suppress(RuntimeError):  # from call_soon_threadsafe: the loop is closed, nobody waits
            self.loop.call_soon_threadsafe(how, self.future, outcome)


class _Runnable(Protocol):
    def run(self) -> Callable[[], None]: ...


class Threads:
    """`await threads.run(call)` runs call() on one of `count` threads, in the caller's context
    (so logs there carry the request id), and resumes the caller with its result or exception.

    It does what `loop.run_in_executor(ThreadPoolExecutor(...), ...)` does, with less per
    call: a hand-over to a waiting thread, and one `call_soon_threadsafe` back. The executor
    also builds a concurrent Future with its Condition and chains an asyncio Future to it, all
    under the GIL that the event loop needs; on the request path that was 9-16% of requests/s.
    A cancelled caller does not stop a call already queued; its result is dropped.

    Calls are taken in the order they came, each by the thread that became idle last: under
    light load one thread serves them all and the others stay cold, so the SQL threads open
    one database connection rather than one each (docs: Architecture, "Each SQL thread keeps
    its own connection"). A thread is marked idle before its caller is resumed, so that the
    caller's next call finds it idle (tests/test_threads.py).
    """

    def __init__(self, count: int, *, name: str) -> None:
        self._lock = threading.Lock()
        self._queued: collections.deque[_Runnable | None] = collections.deque()  # calls no thread was idle for
        # Each idle thread's inbox, the most recently idle last. Never both this and the queue
        # hold anything: a call goes to an idle thread when there is one, a thread takes a
        # queued call when there is one.
        self._idle: list[queue.SimpleQueue[_Runnable | None]] = []
        # Daemon threads: a process that exits without calling close() is not held up by them.
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def queued(self) -> int:
        """Calls waiting for a thread now (approximate; metrics sample it)."""
        return len(self._queued)

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._hand(_Job(call, loop, future))
        return await future

    def close(self) -> None:
        """Let queued calls finish, then stop the threads."""
        for _ in self._threads:
            self._hand(None)
        for thread in self._threads:
            thread.join()

    def _hand(self, job: _Runnable | None) -> None:
        """To the thread that became idle last, or to the queue when none is idle."""
        with self._lock:
            if self._idle:
                self._idle.pop().put(job)
            else:
                self._queued.append(job)

    def _take(self, inbox: queue.SimpleQueue[_Runnable | None]) -> None:
        """Into this thread's inbox, the oldest queued call; or, when none is, mark it idle."""
        with self._lock:
            if self._queued:
                inbox.put(self._queued.popleft())
            else:
                self._idle.append(inbox)

    def _work(self) -> None:
        inbox: queue.SimpleQueue[_Runnable | None] = queue.SimpleQueue()
        self._take(inbox)
        while (job := inbox.get()) is not None:
            settle = job.run()
            self._take(inbox)
            settle()
            del job, settle  # hold nothing of a finished call while waiting for the next


def _resolve(future: asyncio.Future[T], result: T) -> None:
    if not future.cancelled():
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(error)
