"""What one feature costs per request: CPU time or instructions, on against off.

    python -m tests.bench.stack --db both --requests 3000 --repeats 5
    python -m tests.bench.stack --count instructions --through uvicorn --requests 500 --repeats 2
    python -m tests.bench.stack --count instructions --through uvicorn --metrics-files
    python -m tests.bench.stack --feature revocation
    python -m tests.bench.stack --versus fastapi-ourdata --count instructions --scenarios "list todos,get a todo"
    python -m tests.bench.stack --feature connection-per-thread --count instructions --through uvicorn

Each measurement is a fresh process with a real database (reset), warmed up, then sent
`--requests` requests of one scenario one at a time, the feature on or off; on and off
alternate. What is counted is that process's work, every thread of it; the database
server's is not.

- `--through asgi` (the default): the process calls asgi_todo straight through ASGI, with
  its lifespan and SQL threads but no server and no network. The server's own work is left
  out, so a ratio here is an upper bound of the cost through a server.
- `--through uvicorn`: the process is uvicorn with the benchmark's options
  (`tests.bench.run`), this one the client over one kept-alive connection.
- `--count cpu`: CPU time per request, the median of the repeats. Far steadier than requests
  per second on a shared machine, but other load still moves it by several per cent (and
  through uvicorn it is read in clock ticks: give it thousands of requests).
- `--count instructions`: the process runs under valgrind's callgrind, counting only during
  the measured requests (`callgrind_control --instr=on|off`). The same code and inputs give
  nearly the same count however busy the machine is (within about 1% from process to
  process), so a difference of a few per cent can be seen; valgrind makes the process some
  40 times slower. The once-a-second sampling of the metrics' gauges is left out there:
  under valgrind's slow clock it would come every few dozen requests instead of every few
  thousand (one sample is about 23 us, 0.002% of a core at once a second).
- `--versus APP`: asgi_todo against another app of the benchmark (`tests.bench.run.APPS`)
  instead of asgi_todo with a feature off: `--versus fastapi-ourdata` is what FastAPI's
  routing, dependencies, validation and serialisation cost over the same data layer.
- `--metrics-files`: prometheus-client's multiprocess storage (every value in a memory-mapped
  file), as under gunicorn, instead of in memory as under `asgi-todo serve`.

A tool, not a test (`tests/test_bench.py` only checks that it runs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx2 as httpx
from starlette.applications import Starlette

from asgi_todo.app import create_app
from asgi_todo.metrics import Metrics
from asgi_todo.settings import MULTIPROC_ENV, Settings
from tests.bench.checkout import checkout_per_unit_of_work
from tests.bench.norevocation import caller_by_id
from tests.bench.run import APPS, UVICORN_OPTIONS, cpu_seconds, fresh_database
from tests.helpers import SECRET_KEY
from tests.servers import free_port, server_env, start

# What turns a feature off: a setting, or (never a setting) code of the benchmark's own.
FEATURES: dict[str, dict[str, Any]] = {"metrics": {"metrics": False}, "revocation": {}, "connection-per-thread": {}}

WITHOUT: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "revocation": caller_by_id,
    "connection-per-thread": checkout_per_unit_of_work,
}
JSON = [(b"content-type", b"application/json")]
CALLER_TODOS = 20  # as the benchmark's reader has: a list of 10 is a full page with a next one
ROOT = Path(__file__).resolve().parents[2]  # where `python -m tests.bench.stack` runs


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
    Scenario("list todos", "GET", "/api/todos/?limit=10"),  # a full page and a Link: the caller has 20
    Scenario("get a todo", "GET", "/api/todos/{todo}"),
    Scenario("create a todo", "POST", "/api/todos/", b'{"text": "bench"}'),
    Scenario("patch a todo", "PATCH", "/api/todos/{todo}", b'{"completed": true}'),
)


class _App:
    """The app with its lifespan started, called the way a server calls it."""

    def __init__(self, settings: Settings, factory: Callable[[Settings], Any] = create_app) -> None:
        self.app: Starlette = factory(settings)  # FastAPI is a Starlette too
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


class _Client:
    """A server on loopback, asked one request at a time over one kept-alive connection."""

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=600)

    async def call(
        self, method: str, path: str, *, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> tuple[int, bytes]:
        answer = await self.http.request(method, path, content=body, headers=list(headers))
        return answer.status_code, answer.content


class _Window:
    """What the measured requests cost one process: its CPU seconds (every thread), read
    before and after; and, under callgrind, its instructions, counted only inside."""

    def __init__(self, pid: int, count: str) -> None:
        self.pid, self.count = pid, count
        self.started = self.spent = 0.0

    def __enter__(self) -> _Window:
        if self.count == "instructions":
            _callgrind(self.pid, "on")
        self.started = _cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent = _cpu_seconds(self.pid) - self.started
        if self.count == "instructions":
            _callgrind(self.pid, "off")


def _cpu_seconds(pid: int) -> float:
    return time.process_time() if pid == os.getpid() else cpu_seconds([pid])  # finer than /proc's ticks


def _callgrind(pid: int, instrumentation: str) -> None:
    subprocess.run(["callgrind_control", f"--instr={instrumentation}", str(pid)], check=True, capture_output=True)


async def _measure(
    call: Callable[..., Awaitable[tuple[int, bytes]]], scenario: Scenario, requests: int, window: _Window
) -> float:
    """CPU seconds of `requests` requests of `scenario`, after a warm-up (under callgrind,
    counted only then)."""
    status, body = await call(
        "POST", "/api/auth/token", body=b"username=alice@example.com&password=secret2",
        headers=[(b"content-type", b"application/x-www-form-urlencoded")],
    )  # fmt: skip
    assert status == 200, body
    bearer = [(b"authorization", b"Bearer " + json.loads(body)["access_token"].encode())]
    for _ in range(CALLER_TODOS - 2):  # the demo data gives alice 2
        await call("POST", "/api/todos/", body=b'{"text": "a page of them"}', headers=[*bearer, *JSON])
    status, body = await call("GET", "/api/todos/", headers=bearer)
    todo = json.loads(body)[0]["id"]
    path = scenario.path.format(todo=todo)
    headers = [*(bearer if scenario.authorised else []), *(JSON if scenario.body else [])]
    for _ in range(min(200, requests)):
        await call(scenario.method, path, body=scenario.body, headers=headers)
    with window:
        for _ in range(requests):
            status, body = await call(scenario.method, path, body=scenario.body, headers=headers)
    assert 200 <= status < 300, (scenario.name, status, body[:200])
    return window.spent


async def _never(self: Metrics, seconds: float) -> None:
    await asyncio.Event().wait()


def _factory(name: str) -> Callable[[Settings], Any]:
    """An app factory of the benchmark (tests.bench.run.APPS), given settings."""
    module, _, attribute = APPS[name].partition(":")
    factory: Callable[[Settings], Any] = getattr(importlib.import_module(module), attribute)
    return factory


def _switched(switches: ExitStack, settings: Settings, *, without: str, count: str) -> Settings:
    """`settings` with the feature `without` off (none: ""), the code switches entered."""
    if without:
        settings = settings.model_copy(update=FEATURES[without])
        switches.enter_context(WITHOUT.get(without, nullcontext)())
    if count == "instructions":  # valgrind's slow clock would sample far more often than once a second
        switches.enter_context(patch.object(Metrics, "sample_every", _never))
    return settings


def _one(args: argparse.Namespace) -> int:
    """The child of an in-process measurement: calls the app, prints its CPU seconds."""
    scenario = next(scenario for scenario in SCENARIOS if scenario.name == args.one)
    settings = Settings(_env_file=None, database_url=args.url, secret_key=SECRET_KEY, bcrypt_rounds=4, reset_db=True)

    versus = args.versus if args.variant == "off" else ""

    async def measure() -> float:
        async with _App(settings, _factory(versus) if versus else create_app) as app:
            return await _measure(app.call, scenario, args.requests, _Window(os.getpid(), args.count))

    with ExitStack() as switches:
        without = args.feature if args.variant == "off" and not versus else ""
        settings = _switched(switches, settings, without=without, count=args.count)
        print(asyncio.run(measure()))
    return 0


def create_served_app() -> Starlette:
    """The factory of `--through uvicorn`: asgi_todo (or STACK_APP) from the environment, as
    `_one` would switch it (STACK_WITHOUT, STACK_COUNT); the switches last as long as the process."""
    switches = ExitStack()
    without, count = os.environ.get("STACK_WITHOUT", ""), os.environ.get("STACK_COUNT", "cpu")
    factory = _factory(os.environ["STACK_APP"]) if os.environ.get("STACK_APP") else create_app
    app: Starlette = factory(_switched(switches, Settings(_env_file=None), without=without, count=count))
    return app


def _served(args: argparse.Namespace, url: str, scenario: Scenario, variant: str, env: dict[str, str]) -> float:
    """One measurement through uvicorn (the benchmark's options): the server's CPU seconds,
    this process the client."""
    port = free_port()
    given = env
    env = server_env(url, **given, RESET_DB="1", LOG_LEVEL="warning", STACK_COUNT=args.count)
    if MULTIPROC_ENV not in given:
        env.pop(MULTIPROC_ENV, None)
    if variant == "off" and args.versus:
        env["STACK_APP"] = args.versus
    elif variant == "off":
        env["STACK_WITHOUT"] = args.feature
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "tests.bench.stack:create_served_app", "--host", "127.0.0.1",
        "--port", str(port), "--no-access-log", *UVICORN_OPTIONS,
    ]  # fmt: skip
    server = start([*_valgrind(args, env), *command], env, port=port, cwd=str(ROOT))
    try:
        server.wait_healthy(timeout=600)

        async def measure() -> float:
            client = _Client(server.url)
            async with client.http:
                return await _measure(client.call, scenario, args.requests, _Window(server.process.pid, args.count))

        spent = asyncio.run(measure())
    finally:
        if server.stop(timeout=300) not in (0, -signal.SIGTERM):  # callgrind writes its counts at the exit
            raise SystemExit(f"{scenario.name} ({variant}): the server failed:\n{server.output()[-3000:]}")
    return spent


def _valgrind(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    if args.count != "instructions":
        return []
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={env['STACK_COUNTS']}"]


def _per_request(args: argparse.Namespace, url: str, scenario: Scenario, variant: str, workdir: str) -> float:
    """One measurement in a fresh process: CPU microseconds, or instructions, per request."""
    counts = Path(tempfile.mkstemp(prefix="callgrind-", dir=workdir)[1])
    env = {"PYTHONHASHSEED": "0", "STACK_COUNTS": str(counts)}
    if args.metrics_files:
        env[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="metrics-", dir=workdir)
    if args.through == "uvicorn":
        spent = _served(args, url, scenario, variant, env)
    else:
        command = [
            sys.executable, "-m", "tests.bench.stack", "--one", scenario.name, "--variant", variant, "--url", url,
            "--feature", args.feature, "--requests", str(args.requests), "--count", args.count,
            *(["--versus", args.versus] if args.versus else []),
        ]  # fmt: skip
        inherited = {key: value for key, value in os.environ.items() if key != MULTIPROC_ENV}
        done = subprocess.run(
            [*_valgrind(args, env), *command], env={**inherited, **env}, cwd=ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{scenario.name} ({variant}) failed:\n{done.stderr[-3000:]}")
        spent = float(done.stdout.split()[-1])
    requests: int = args.requests
    if args.count == "cpu":
        return spent * 1e6 / requests
    totals = re.search(r"^totals: (\d+)$", counts.read_text(), re.MULTILINE)
    assert totals is not None, counts
    return int(totals.group(1)) / requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--feature", choices=list(FEATURES), default="metrics")
    parser.add_argument("--count", choices=["cpu", "instructions"], default="cpu", help="what a request costs in")
    parser.add_argument(
        "--versus", choices=[app for app in APPS if app != "asgi_todo"], help="against this app, not a feature off"
    )
    parser.add_argument("--metrics-files", action="store_true", help="metrics kept in files, as under gunicorn")
    parser.add_argument("--through", choices=["asgi", "uvicorn"], default="asgi", help="call the app, or a server")
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS), help="comma-separated names")
    for hidden in ("--one", "--variant", "--url"):  # how the tool calls itself, once per measurement
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _one(args)
    scenarios = [scenario for scenario in SCENARIOS if scenario.name in args.scenarios.split(",")]
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    unit = "CPU us" if args.count == "cpu" else "instructions"
    storage = ", metrics in files" if args.metrics_files else ""
    compared = f"asgi_todo (on) / {args.versus} (off)" if args.versus else f"{args.feature!r} on / off"
    print(
        f"{unit} per request through {args.through}{storage}, {compared},"
        f" median of {args.repeats} x {args.requests} requests"
    )
    for kind in kinds:
        name = f"asgi_todo_stack_{uuid.uuid4().hex[:8]}"
        with (
            tempfile.TemporaryDirectory(prefix="asgi_todo-stack-") as workdir,
            fresh_database(kind, sqlite_file=Path(workdir, "bench.db"), name=name) as url,
        ):
            for scenario in scenarios:
                runs: dict[str, list[float]] = {"on": [], "off": []}
                for _ in range(args.repeats):
                    for variant, figures in runs.items():
                        figures.append(_per_request(args, url, scenario, variant, workdir))
                on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
                spread = max(max(figures) / min(figures) for figures in runs.values())
                print(
                    f"{kind:10} {scenario.name:14} on {on:9.1f}  off {off:9.1f}  on/off {on / off:5.3f}"
                    f"  (widest max/min of a variant {spread:5.3f})",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
