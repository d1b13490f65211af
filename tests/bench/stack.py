"""What one feature costs, in CPU time per request, measured inside one process.

    python -m tests.bench.stack --db both --requests 3000 --repeats 5
    python -m tests.bench.stack --feature revocation

asgi_todo is called straight through ASGI (no server, no network), with its lifespan, its
SQL threads and a real database, once with a feature on and once with it off, alternating;
each figure is the process's CPU time (every thread) per request, the median of the
repeats. On a shared machine that is far steadier than requests per second: other load
slows a run down but does not make it use more CPU. The server's own work (uvicorn's
parsing and sending) is left out, so a ratio here is an upper bound of the cost through a
server. A tool, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from asgi_todo.app import create_app
from asgi_todo.settings import Settings
from tests.bench.norevocation import caller_by_id
from tests.helpers import POSTGRES_ADMIN_URL, SECRET_KEY

# What turns a feature off: a setting, or (never a setting) code of the benchmark's own.
FEATURES: dict[str, dict[str, Any]] = {"metrics": {"metrics": False}, "revocation": {}}
WITHOUT = {"revocation": caller_by_id}
JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    body: bytes = b""
    authorised: bool = True


SCENARIOS = (
    Scenario("health", "GET", "/health", authorised=False),
    Scenario("me", "GET", "/api/auth/me"),
    Scenario("list todos", "GET", "/api/todos"),
    Scenario("get a todo", "GET", "/api/todos/{todo}"),
    Scenario("create a todo", "POST", "/api/todos", b'{"text": "bench"}'),
    Scenario("patch a todo", "PATCH", "/api/todos/{todo}", b'{"completed": true}'),
)


class _App:
    """The app with its lifespan started, called the way a server calls it."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.state: dict[str, Any] = {}
        self._shutdown = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _App:
        started = asyncio.Event()
        sent_startup = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()
            elif message["type"] == "lifespan.startup.failed":
                raise SystemExit(message.get("message", "start-up failed"))

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.create_task(self.app(scope, receive, send))  # type: ignore[arg-type]
        await started.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._shutdown.set()
        if self._task is not None:
            await self._task

    async def call(
        self, method: str, path: str, *, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> tuple[int, bytes]:
        status = 0
        chunks: list[bytes] = []
        raw_path, _, query = path.partition("?")

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": raw_path, "raw_path": raw_path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"bench"), *headers], "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
            "state": dict(self.state),
        }  # fmt: skip
        await self.app(scope, receive, send)  # type: ignore[arg-type]
        return status, b"".join(chunks)


async def _measure(settings: Settings, scenario: Scenario, requests: int) -> float:
    """CPU microseconds per request of `scenario`, after a warm-up."""
    import json

    async with _App(settings) as app:
        status, body = await app.call(
            "POST", "/api/auth/token", body=b"username=alice@example.com&password=secret2",
            headers=[(b"content-type", b"application/x-www-form-urlencoded")],
        )  # fmt: skip
        assert status == 200, body
        bearer = [(b"authorization", b"Bearer " + json.loads(body)["access_token"].encode())]
        status, body = await app.call("GET", "/api/todos", headers=bearer)
        todo = json.loads(body)[0]["id"]
        path = scenario.path.format(todo=todo)
        headers = [*(bearer if scenario.authorised else []), *(JSON if scenario.body else [])]
        for _ in range(min(200, requests)):
            await app.call(scenario.method, path, body=scenario.body, headers=headers)
        started = time.process_time()
        for _ in range(requests):
            status, body = await app.call(scenario.method, path, body=scenario.body, headers=headers)
        spent = time.process_time() - started
        assert 200 <= status < 300, (scenario.name, status, body[:200])
    return spent * 1e6 / requests


def _database(kind: str, workdir: str) -> tuple[str, sa.Engine | None, str]:
    if kind == "sqlite":
        return f"sqlite:///{workdir}/bench.db", None, ""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"asgi_todo_stack_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return admin.url.set(database=name).render_as_string(hide_password=False), admin, name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--feature", choices=list(FEATURES), default="metrics")
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(f"CPU us per request, feature {args.feature!r} on / off, median of {args.repeats} x {args.requests} requests")
    for kind in kinds:
        workdir = tempfile.mkdtemp(prefix="asgi_todo-stack-")
        url, admin, name = _database(kind, workdir)
        try:
            base = Settings(_env_file=None, database_url=url, secret_key=SECRET_KEY, bcrypt_rounds=4, reset_db=True)
            variants = {"on": base, "off": base.model_copy(update=FEATURES[args.feature])}
            without = WITHOUT.get(args.feature, nullcontext)
            for scenario in SCENARIOS:
                runs: dict[str, list[float]] = {"on": [], "off": []}
                for _ in range(args.repeats):
                    for label, settings in variants.items():
                        switch: AbstractContextManager[None] = without() if label == "off" else nullcontext()
                        with switch:
                            runs[label].append(asyncio.run(_measure(settings, scenario, args.requests)))
                on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
                print(f"{kind:10} {scenario.name:14} on {on:7.1f}  off {off:7.1f}  on/off {on / off:5.3f}", flush=True)
        finally:
            if admin is not None:
                with admin.connect() as connection:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
