"""Prometheus metrics, correct under gunicorn's pre-fork model.

Under gunicorn every worker writes its values to files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus-client's multiprocess mode); any worker's `/metrics` then reads all of them, so a
scrape sees the whole server. The master makes that directory empty at each start and marks a
dead worker's live gauges gone (gunicorn_conf). prometheus-client picks its storage when it is
first imported, so nothing that the gunicorn master imports before that may import this
module: only `app` (in the workers) and the master's hooks, after the directory is set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .context import peer_address
from .errors import json_response
from .settings import MULTIPROC_ENV

logger = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # the route label of a request no route serves with its method
OTHER = "other"  # the method label of a method no route serves
# Under gunicorn, what a child process runs to read every worker's metric files
# (prometheus-client's multiprocess mode; the directory comes with the environment): for each
# line it reads, the exposition's length in 8 bytes, then the exposition.
_READ_WORKERS = """
import sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
while sys.stdin.buffer.readline():
    text = generate_latest(registry)
    sys.stdout.buffer.write(len(text).to_bytes(8, "big") + text)
    sys.stdout.buffer.flush()
"""
_READ_SECONDS = 30.0
# A route that does not say which methods it serves (a Mount of the docs' static files) is read-only.
_READ_ONLY = frozenset({"GET", "HEAD"})

# Most answers here take 0.3 to 10 ms; a login is one bcrypt check (about 0.25 s at 12 rounds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def mark_worker_dead(pid: int) -> None:
    """A worker has exited: its live gauges (requests in flight, pool use) go away; its
    counters and histograms stay, so totals never go backwards."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# What the launcher (the gunicorn master, the CLI) did before the server started; one per process.
_LAUNCH = CollectorRegistry(auto_describe=True)
_STARTUP_RUNS = Counter(
    "asgi_todo_startup_runs",
    "RESET_DB / UPDATE_DB runs done by this server's start (skipped ones are not counted).",
    ["action"],
    registry=_LAUNCH,
)
for _action in ("reset", "update"):
    _STARTUP_RUNS.labels(_action)  # exported as 0 until a run: alerts and dashboards can rely on it


def record_startup(action: str) -> None:
    """Count a RESET_DB or UPDATE_DB run of the launcher (`prepare_launch`'s answer)."""
    if action in ("reset", "update"):
        _STARTUP_RUNS.labels(action).inc()


class Metrics:
    """The service's metrics, built once per process by the lifespan."""

    def __init__(self, *, database_kind: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "asgi_todo_http_requests",
            "HTTP requests answered, by method, route template and status class.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "asgi_todo_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "asgi_todo_http_requests_in_flight",
            "Requests being answered now, by method and route template.",
            ["method", "route"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.pool_in_use = Gauge(
            "asgi_todo_db_pool_connections_in_use",
            "Database connections checked out of the pool.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.pool_waiting = Gauge(
            "asgi_todo_db_pool_waiting",
            "Units of work waiting for a pool connection (or connecting).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "asgi_todo_thread_queue_depth",
            "Calls queued for a thread and not started yet, by pool (db: SQL, bcrypt: password hashing).",
            ["pool"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.login_failures = Counter(
            "asgi_todo_login_failures",
            "Password checks that failed (a login, or a password change), wrong email or password.",
            registry=registry,
        )
        self.lockouts = Counter(
            "asgi_todo_login_lockouts", "Token requests answered 429 by the brute-force limits.", registry=registry
        )
        self.forwarded_untrusted = Counter(
            "asgi_todo_forwarded_untrusted",
            "Requests carrying X-Forwarded-For from a peer not in FORWARDED_ALLOW_IPS: the header was"
            " ignored, and the clients behind that peer share its per-client limits.",
            registry=registry,
        )
        self.refresh_reuse = Counter(
            "asgi_todo_refresh_token_reuse",
            "Refresh tokens presented again after use (the login is revoked).",
            registry=registry,
        )
        self.build = Gauge(
            "asgi_todo_build_info",
            "Always 1; the labels say what runs.",
            ["version", "python", "database"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.build.labels(__version__, platform.python_version(), database_kind).set(1)
        self._children: dict[tuple[str, str], tuple[Any, Any, tuple[Any, ...]]] = {}
        # The same children as `end` finds them: by the route's id (the app's routes live as
        # long as it does), skipping the template.
        self._observers: dict[tuple[int, str], tuple[Any, tuple[Any, ...]]] = {}
        self._sources: tuple[Engine, Callable[[], int], Callable[[], int], Callable[[], int]] | None = None
        # The requests being answered, by id: the in-flight gauges are counted from them when
        # sampled (each one is routed before its first await), not written twice per request.
        self._answering: dict[int, Scope] = {}
        self._tracked: set[int] = set()  # the ids of the routes whose requests in flight are counted
        self._methods: set[str] = set()  # the methods some route serves: the method label's values
        self._reader: _FilesReader | None = None  # under gunicorn, from the first scrape on
        self._declared: list[tuple[str, str]] = []  # served (method, route) pairs whose series are not made yet
        for pool in ("db", "bcrypt"):
            self.queue_depth.labels(pool)

    def route(self, method: str, route: str) -> tuple[Any, Any, tuple[Any, ...]]:
        """The (in flight, latency, counters by status class) children of one route, made once."""
        key = (method, route)
        children = self._children.get(key)
        if children is None:
            counters = tuple(self.requests.labels(method, route, status) for status in _STATUS_CLASSES)
            children = (self.in_flight.labels(method, route), self.latency.labels(method, route), counters)
            self._children[key] = children
        return children

    def track(self, routes: Iterable[BaseRoute]) -> None:
        """Count the requests in flight of these routes (the service's, not `/metrics`), and
        export each method and route they serve, at 0 until used: every scrape shows them all,
        and no request adds more than a few (`labels`).

        Their series are made at the first scrape (`render`), or at a route's first request,
        not here: some 300 children of the request metrics cost an app's start about 10 ms,
        which the test suite pays for every app it builds."""
        for route in routes:
            self._tracked.add(id(route))
            methods = served_methods(route)
            self._methods |= methods
            self._declared += [(method, route_template(route)) for method in methods]

    def _declare(self) -> None:
        """Make the series of the tracked routes that no request has made yet."""
        for method, template in self._declared:
            self.route(method, template)
        self._declared.clear()

    def labels(self, route: BaseRoute | None, method: str) -> tuple[str, str]:
        """The (method, route) labels of a request: a method no route serves is `other`, and
        a route that does not serve the method (or no route) is `unmatched`; whatever the
        requests, the labels are the served pairs and at most one `unmatched` per method."""
        if method not in self._methods:
            return OTHER, UNMATCHED
        if route is None or method not in served_methods(route):
            return method, UNMATCHED
        return method, route_template(route)

    def begin(self, scope: Scope) -> None:
        """A request arrived (middleware.RequestId calls it first)."""
        self._answering[id(scope)] = scope

    def end(self, scope: Scope, status: int, seconds: float) -> None:
        """Count and time one answered request (middleware.RequestId calls it at the end)."""
        del self._answering[id(scope)]
        route = scope.get("route")
        method = scope["method"]
        key = (id(route), method if method in self._methods else OTHER)  # a bounded cache
        observers = self._observers.get(key)
        if observers is None:
            observers = self._observers[key] = self._observers_of(route, method)
        latency, by_class = observers
        latency.observe(seconds)
        by_class[status // 100 if status < 600 else 5].inc()

    def _observers_of(self, route: BaseRoute | None, method: str) -> tuple[Any, tuple[Any, ...]]:
        """The latency histogram and the counters of one route and method, the counters indexed
        by `status // 100` (0 is never used; 1xx goes there too)."""
        _, latency, counters = self.route(*self.labels(route, method))
        return latency, (counters[0], *counters)

    async def render(self) -> bytes:
        """The exposition text, made off the event loop. This process's own metrics in a
        thread; under gunicorn, every worker's files in a child process: reading them is
        Python work that takes a large part of a second with many series or files, and a
        thread would share the interpreter lock with the event loop for all of it.

        Under gunicorn, the worker that answers makes its own series of every tracked route
        first (`_declare`): its files then hold each one, and the scrape shows them all."""
        self._declare()  # on the event loop, as `begin` and `end` are
        if multiprocess_dir() is None:
            return await anyio.to_thread.run_sync(self._render_own)
        if self._reader is None:
            self._reader = _FilesReader()
        return await self._reader.read()

    async def close(self) -> None:
        """Stop the child that reads the workers' files, if a scrape started one (the lifespan's end)."""
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    def _render_own(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(_LAUNCH)

    def watch(
        self, *, engine: Engine, waiting: Callable[[], int], sql: Callable[[], int], bcrypt: Callable[[], int]
    ) -> None:
        """Where the pool and queue gauges are read from: sampled (`sample`), not kept up to
        date on every call, which would cost each request several locked writes."""
        self._sources = (engine, waiting, sql, bcrypt)

    def sample(self) -> None:
        """Read the requests in flight, the pool and the thread queues into their gauges (the
        lifespan does it every second, and a scrape first). Runs on the event loop, as
        `begin` and `end` do."""
        in_flight: dict[tuple[str, str], int] = dict.fromkeys(self._children, 0)
        for scope in self._answering.values():
            route = scope.get("route")
            if route is not None and id(route) in self._tracked:
                key = self.labels(route, scope["method"])
                in_flight[key] = in_flight.get(key, 0) + 1
        for (method, template), count in in_flight.items():
            self.route(method, template)[0].set(count)
        if self._sources is None:
            return
        engine, waiting, sql, bcrypt = self._sources
        pool = engine.pool
        self.pool_in_use.set(pool.checkedout() if isinstance(pool, QueuePool) else 0)
        self.pool_waiting.set(waiting())
        self.queue_depth.labels("db").set(sql())
        self.queue_depth.labels("bcrypt").set(bcrypt())

    async def sample_every(self, seconds: float) -> None:
        while True:
            self.sample()
            await asyncio.sleep(seconds)


class _FilesReader:
    """The child process that reads every worker's files, started by the first scrape and
    kept for the next ones. Started anew for each scrape, the child spent about 0.1 s of CPU
    starting Python and prometheus-client, which the worker's own requests waited for on a
    busy machine (docs/protocol-limits.md). One scrape at a time; a child that fails, is
    too slow or is left mid-answer is killed, and the next scrape starts another."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._child: asyncio.subprocess.Process | None = None

    async def read(self) -> bytes:
        async with self._lock:
            try:
                return await asyncio.wait_for(self._read(), _READ_SECONDS)
            except BaseException:  # a cancelled scrape too: the child's answer would come to the next one
                if self._child is not None and self._child.returncode is None:
                    self._child.kill()
                self._child = None
                raise

    async def _read(self) -> bytes:
        if self._child is not None and self._child.returncode is not None:
            self._child = None  # ended since the last scrape (killed, out of memory): start another
        if self._child is None:
            pipe = asyncio.subprocess.PIPE
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _READ_WORKERS, stdin=pipe, stdout=pipe, stderr=pipe
            )
        child = self._child
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        try:
            child.stdin.write(b"\n")
            await child.stdin.drain()
            size = int.from_bytes(await child.stdout.readexactly(8), "big")
            return await child.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            stderr = (await child.stderr.read()).decode(errors="replace")[-1000:]
            raise RuntimeError(f"reading the workers' metrics failed: {stderr}") from exc

    async def close(self) -> None:
        async with self._lock:
            child, self._child = self._child, None
            if child is None or child.stdin is None:
                return
            child.stdin.close()  # the child's loop ends
            try:
                await asyncio.wait_for(child.wait(), 5)
            except TimeoutError:
                child.kill()
                await child.wait()


def served_methods(route: BaseRoute) -> frozenset[str]:
    """The methods a route serves: a Route's own list, or the one its app gives when it picks
    the endpoint by method itself (operations' routes); read-only when it says nothing."""
    methods = getattr(route, "methods", None) or getattr(getattr(route, "app", None), "methods", None)
    return frozenset(methods) if methods else _READ_ONLY


def route_template(route: BaseRoute) -> str:
    if isinstance(route, Mount):
        return route.path + "/{path}"
    if isinstance(route, Route):
        return route.path
    return UNMATCHED


class Exposition:
    """`GET /metrics` in the Prometheus text format, for the metrics port only when one is
    set (`METRICS_PORT`), otherwise for the addresses in `METRICS_ALLOW_IPS` (loopback by
    default): never public by default. Anyone else gets the 404 of an unknown path."""

    def __init__(self, metrics: Metrics, *, port: int | None, allow: Sequence[str]) -> None:
        self.metrics = metrics
        self.port = port
        self.allow = [ipaddress.ip_network(entry, strict=False) for entry in allow]

    def allowed(self, scope: Scope) -> bool:
        if self.port is not None:
            server = scope.get("server")
            return server is not None and server[1] == self.port
        peer = peer_address(scope)  # the connecting peer's: never what X-Forwarded-For says
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.allow)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.allowed(scope):
            await json_response(404, {"detail": "Not Found"})(scope, receive, send)
            return
        self.metrics.sample()  # on the event loop, where the requests it counts live
        try:
            body = await self.metrics.render()
        except (RuntimeError, TimeoutError, OSError):
            logger.exception("GET /metrics")
            await json_response(503, {"detail": "Metrics unavailable"})(scope, receive, send)
            return
        headers = [(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class MetricsPortGuard:
    """With `METRICS_PORT` set, that port answers `/metrics` and nothing else."""

    def __init__(self, app: ASGIApp, *, port: int, path: str = "/metrics") -> None:
        self.app = app
        self.port = port
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") if scope["type"] == "http" else None
        if server is not None and server[1] == self.port and scope["path"] != self.path:
            await json_response(404, {"detail": "Not Found"})(scope, receive, send)
            return
        await self.app(scope, receive, send)
