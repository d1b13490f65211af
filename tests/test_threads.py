"""The threads that run SQL and bcrypt for the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest

from asgi_todo.threads import Threads

_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@pytest.fixture
def threads() -> Iterator[Threads]:
    pool = Threads(2, name="test-threads")
    yield pool
    pool.close()


def test_a_call_runs_off_the_loop_and_returns_its_result(threads: Threads) -> None:
    async def main() -> tuple[str, str]:
        return threading.current_thread().name, await threads.run(lambda: threading.current_thread().name)

    loop_thread, call_thread = asyncio.run(main())
    assert call_thread.startswith("test-threads-")
    assert call_thread != loop_thread


def test_an_exception_reaches_the_caller(threads: Threads) -> None:
    def fail() -> None:
        raise LookupError("no such row")

    async def main() -> None:
        await threads.run(fail)

    with pytest.raises(LookupError, match="no such row"):
        asyncio.run(main())


def test_the_call_sees_the_callers_context(threads: Threads) -> None:
    async def request(name: str) -> str:
        _who.set(name)
        await asyncio.sleep(0)
        return await threads.run(_who.get)

    async def main() -> list[str]:
        return await asyncio.gather(*(request(f"request-{n}") for n in range(20)))

    assert asyncio.run(main()) == [f"request-{n}" for n in range(20)]


def test_calls_run_side_by_side_on_every_thread(threads: Threads) -> None:
    both = threading.Barrier(2, timeout=5)

    async def main() -> tuple[int, int]:
        # Each call waits for the other: this finishes only if two threads serve them.
        return await asyncio.gather(threads.run(both.wait), threads.run(both.wait))

    assert sorted(asyncio.run(main())) == [0, 1]


def test_calls_one_after_another_keep_to_one_thread() -> None:
    """The most recently idle thread takes the next call: under light load one SQL thread,
    and so one database connection, serves every request, where each thread in turn would
    open a connection of its own (docs: Architecture, "Each SQL thread keeps its own
    connection")."""
    pool = Threads(4, name="test-one-by-one")

    async def main() -> set[str]:
        return {await pool.run(lambda: threading.current_thread().name) for _ in range(20)}

    try:
        assert len(asyncio.run(main())) == 1
    finally:
        pool.close()


def test_a_cancelled_caller_leaves_the_threads_working(threads: Threads) -> None:
    async def main() -> str:
        slow = asyncio.ensure_future(threads.run(lambda: time.sleep(0.2)))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await asyncio.sleep(0.3)  # the dropped call has finished and settled nothing
        return await threads.run(lambda: "still serving")

    assert asyncio.run(main()) == "still serving"


def test_close_lets_queued_calls_finish_after_their_loop_is_gone() -> None:
    pool = Threads(1, name="test-close")
    done: list[int] = []

    def slow_append(n: int) -> None:
        time.sleep(0.02)
        done.append(n)

    async def main() -> list[asyncio.Task[None]]:
        callers = [asyncio.create_task(pool.run(partial(slow_append, n))) for n in range(5)]
        await asyncio.sleep(0)  # the calls are queued; asyncio.run then cancels their callers
        return callers

    asyncio.run(main())
    pool.close()
    assert done == [0, 1, 2, 3, 4]
    assert not any(thread.is_alive() for thread in pool._threads)
