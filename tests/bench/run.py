"""The benchmark in one command: asgi_todo, its FastAPI and Litestar twins and the bare-ASGI ceiling.

The FastAPI twins are two: `fastapi`, written as FastAPI's docs teach it (ORM, sync
endpoints), and `fastapi-ourdata`, FastAPI over asgi_todo's own data layer, so that
asgi_todo/fastapi-ourdata is what the framework alone costs.

    python -m tests.bench.run --db both --servers both --duration 10 --repeats 3

For each database it seeds the same data (1,000 users, 10,000 todos by default), starts
the three apps under the same server (uvicorn, one worker, httptools and uvloop; or
gunicorn with two uvicorn workers), checks that each answers every scenario with its 2xx,
then drives each scenario with wrk, interleaving the apps (A B C A B C ...) and repeating.
It prints requests/s, p50 and p99 per app with the ratios asgi_todo/FastAPI,
asgi_todo/Litestar and asgi_todo/ceiling, errors, peak RSS, and `GET /health` latency while token requests
saturate the server; and writes the same to OUT/results.json, OUT/table.txt and a bar
chart, OUT/requests.png. With --latency it then offers each app half its measured maximum for
each scenario at a constant rate (tests/bench/constant_rate.py) and reports p50/p99 counted
from each request's scheduled send time; with --latency-rate slowest every app gets the same
rate, half of the slowest app's maximum. Any failed request makes it exit with status 1.

It is a tool, not a test: only ratios from one interleaved run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx2 as httpx
import sqlalchemy as sa

from asgi_todo import security
from asgi_todo.db import make_engine
from asgi_todo.models import Login, Todo, User, utcnow
from asgi_todo.settings import Settings
from asgi_todo.startup import prepare
from tests.bench import constant_rate
from tests.helpers import POSTGRES_ADMIN_URL, postgres_database
from tests.servers import Server, children, rss_kib, server_env, start_gunicorn_factory, start_uvicorn, stop_all

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk.lua"
PREFIX = "/api"
APPS = {
    "asgi_todo": "asgi_todo.app:create_app",
    "fastapi": "tests.bench.fastapi_twin:create_app",
    # FastAPI's routing, dependencies, validation and serialisation over asgi_todo's own data layer.
    "fastapi-ourdata": "tests.bench.fastapi_ourdata_twin:create_app",
    "litestar": "tests.bench.litestar_twin:create_app",
    "ceiling": "tests.bench.ceiling:create_app",
    # asgi_todo with one feature switched off, to show what that feature costs.
    "asgi_todo-nometrics": "asgi_todo.app:create_app",
    "asgi_todo-norevocation": "tests.bench.norevocation:create_app",
}
APP_ENV = {"asgi_todo-nometrics": {"METRICS": "0"}}
SERVERS = {
    "uvicorn": "uvicorn, 1 worker, httptools, uvloop",
    "gunicorn": "gunicorn, 2 uvicorn workers",
}
UVICORN_OPTIONS = ("--http", "httptools", "--loop", "uvloop", "--log-level", "warning")
GUNICORN_OPTIONS = ("--log-level", "warning")
BENCH_DATABASE = "asgi_todo_bench"
PASSWORD = "benchmark-password"
LOGIN_EMAIL = "bench00003@example.com"  # the fourth bench user, who only logs in
PATCHER_TODOS = 1000
SATURATION = "health while token requests saturate"
FEW_REQUESTS = 20
COLOURS = {
    "asgi_todo": "#2b7bba",
    "fastapi": "#e08a2c",
    "fastapi-ourdata": "#c0504d",
    "litestar": "#5a9e4b",
    "ceiling": "#9a9a9a",
}
CHARTED = ("health", "list todos", "get a todo", "create a todo", "patch a todo", "me", "token")


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "read", "write" or "token": the targets differ
    method: str
    path: str
    token: str = ""
    body: str = ""
    content_type: str = ""
    ids: tuple[int, ...] = ()  # when set, each request goes to path + one of these, at random
    expect: int = 200

    def first_path(self) -> str:
        return f"{self.path}{self.ids[0]}" if self.ids else self.path


@dataclass(frozen=True)
class Seed:
    """Who does what: each scenario has its own user, so writes never change what reads see."""

    reader: int
    reader_todos: tuple[int, ...]
    patcher: int
    patcher_todos: tuple[int, ...]
    writer: int
    login_email: str
    logins: dict[int, str]  # a login of each of the three, which their access tokens name


@dataclass
class Measurement:
    db: str
    server: str
    app: str
    scenario: str
    repeat: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    error_detail: dict[str, int] = field(default_factory=dict)
    cpu_us: float = 0.0  # the server's CPU time per request: steadier than req/s on a busy machine


# Seeding


def bench_database_url(db: str, admin_url: str, workdir: Path) -> str:
    """A fresh database: a file in `workdir`, or a new PostgreSQL database beside `admin_url`'s."""
    if db == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
            connection.exec_driver_sql(f'CREATE DATABASE "{BENCH_DATABASE}"')
        return admin.url.set(database=BENCH_DATABASE).render_as_string(hide_password=False)
    finally:
        admin.dispose()


@contextmanager
def fresh_database(db: str, *, sqlite_file: Path, name: str, admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A new database for a run: the SQLite file (left where it is), or PostgreSQL database
    `name` beside `admin_url`'s, dropped at the end."""
    if db == "sqlite":
        yield f"sqlite:///{sqlite_file}"
        return
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with postgres_database(admin, name) as url:
            yield url
    finally:
        admin.dispose()


def seed(settings: Settings, *, users: int, todos: int) -> Seed:
    """Drop, create, the demo users, then `users` users with `todos` todos between them.

    The reader has a list of 20 todos; the patcher has 1,000, so that concurrent patches
    seldom meet on one row; the rest are shared out round-robin. One bcrypt hash serves
    every user, and rows go in by executemany, so this takes seconds.
    """
    prepare(settings.model_copy(update={"reset_db": True}), start=f"bench-{uuid.uuid4().hex}", force=True)
    hashed = security.hash_password(PASSWORD, rounds=settings.bcrypt_rounds)
    now = utcnow()
    engine = make_engine(settings, pool_size=1)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.insert(User),
                [
                    {"email": f"bench{n:05d}@example.com", "hashed_password": hashed, "fname": "Bench",
                     "lname": f"User {n}", "is_superuser": False, "created_at": now, "updated_at": now}
                    for n in range(users)
                ],
            )  # fmt: skip
            ids = connection.scalars(sa.select(User.id).where(User.email.like("bench%")).order_by(User.id)).all()
            reader, patcher, writer = ids[:3]
            owners = [reader] * 20 + [patcher] * PATCHER_TODOS
            owners += [ids[n % len(ids)] for n in range(todos - len(owners))]
            connection.execute(
                sa.insert(Todo),
                [
                    {"text": f"Todo {n} of bench user {owner}", "completed": n % 3 == 0, "owner_id": owner,
                     "created_at": now, "updated_at": now}
                    for n, owner in enumerate(owners)
                ],
            )  # fmt: skip
            owned = {
                user_id: tuple(connection.scalars(sa.select(Todo.id).where(Todo.owner_id == user_id)).all())
                for user_id in (reader, patcher)
            }
            logins = {user_id: uuid.uuid4().hex for user_id in (reader, patcher, writer)}
            connection.execute(
                sa.insert(Login),
                [
                    {"id": login, "user_id": user_id, "client": "bench", "created_at": now}
                    for user_id, login in logins.items()
                ],
            )
            connection.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()
    return Seed(reader, owned[reader], patcher, owned[patcher], writer, login_email=LOGIN_EMAIL, logins=logins)


def scenarios(seed: Seed, tokens: security.TokenCodec) -> list[Scenario]:
    def issue(user_id: int) -> str:
        return tokens.issue(user_id, login=seed.logins[user_id])

    reader = issue(seed.reader)
    return [
        Scenario("health", "read", "GET", "/health"),
        Scenario("list todos", "read", "GET", f"{PREFIX}/todos/?limit=10", token=reader),
        Scenario("get a todo", "read", "GET", f"{PREFIX}/todos/", token=reader, ids=seed.reader_todos),
        Scenario(
            "create a todo",
            "write",
            "POST",
            f"{PREFIX}/todos/",
            token=issue(seed.writer),
            body='{"text": "Written by the benchmark"}',
            content_type="application/json",
            expect=201,
        ),
        Scenario(
            "patch a todo",
            "write",
            "PATCH",
            f"{PREFIX}/todos/",
            token=issue(seed.patcher),
            body='{"text": "Patched by the benchmark", "completed": true}',
            content_type="application/json",
            ids=seed.patcher_todos,
        ),
        Scenario("me", "read", "GET", f"{PREFIX}/auth/me", token=reader),
        Scenario(
            "token",
            "token",
            "POST",
            f"{PREFIX}/auth/token",
            body=f"username={seed.login_email}&password={PASSWORD}",
            content_type="application/x-www-form-urlencoded",
        ),
    ]


# Servers, wrk, memory


def start_app(app: str, server: str, env: dict[str, str]) -> Server:
    env = {**env, **APP_ENV.get(app, {})}
    if server == "uvicorn":
        return start_uvicorn(env, factory=APPS[app], options=UVICORN_OPTIONS)
    return start_gunicorn_factory(env, factory=APPS[app], workers=2, options=GUNICORN_OPTIONS)


@contextmanager
def running(apps: Sequence[str], server: str, env: dict[str, str]) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        for app in apps:
            started[app] = start_app(app, server, env)
        for instance in started.values():
            instance.wait_healthy(timeout=120)
        yield started
    finally:
        stop_all(list(started.values()))


def check(url: str, scenario: Scenario) -> None:
    """One request: the scenario must answer exactly its 2xx, or the run stops here."""
    headers = {"Authorization": f"Bearer {scenario.token}"} if scenario.token else {}
    if scenario.content_type:
        headers["Content-Type"] = scenario.content_type
    response = httpx.request(
        scenario.method, url + scenario.first_path(), headers=headers, content=scenario.body or None, timeout=60
    )
    if response.status_code != scenario.expect:
        raise RuntimeError(
            f"{url}: {scenario.name} answered {response.status_code}, not {scenario.expect}: {response.text[:500]}"
        )


def wrk(url: str, scenario: Scenario, *, duration: float, connections: int, threads: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "WRK_METHOD": scenario.method,
        "WRK_BODY": scenario.body,
        "WRK_CONTENT_TYPE": scenario.content_type,
        "WRK_TOKEN": scenario.token,
        "WRK_IDS": ",".join(map(str, scenario.ids)),
        "WRK_PATH_PREFIX": scenario.path,
    }
    command = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration:g}s", "--latency",
        "--timeout", "30s", "-s", str(WRK_SCRIPT), url + scenario.first_path(),
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=timeout)
    match = re.search(r"^WRK_JSON (\{.*\})$", stdout, re.MULTILINE)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stderr.strip() or stdout.strip()}")
    result: dict[str, Any] = json.loads(match.group(1))
    return result


def measurement(raw: dict[str, Any], *, db: str, server: str, app: str, scenario: str, repeat: int) -> Measurement:
    detail = {
        "non_2xx": raw["status_errors"],
        "connect": raw["connect_errors"],
        "read": raw["read_errors"],
        "write": raw["write_errors"],
        "timeout": raw["timeouts"],
    }
    return Measurement(
        db=db,
        server=server,
        app=app,
        scenario=scenario,
        repeat=repeat,
        rps=raw["requests"] / max(raw["duration_us"] / 1e6, 1e-9),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        requests=raw["requests"],
        errors=sum(detail.values()),
        error_detail={name: count for name, count in detail.items() if count},
    )


def memory(server: Server) -> dict[str, float]:
    """Peak RSS (VmHWM) per worker, or of the server itself when it has none, and in all."""
    master = server.process.pid
    workers = [rss_kib(pid, peak=True) / 1024 for pid in children(master)]
    master_mb = rss_kib(master, peak=True) / 1024
    return {
        "per_worker_mb": max(workers or [master_mb]),
        "total_mb": master_mb + sum(workers),
        "processes": 1 + len(workers),
    }


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def settle(servers: Sequence[Server], timeout: float = 60) -> None:
    """Wait until no server burns CPU: requests that wrk gave up on (bcrypt above all) may
    still be running when it exits, and would slow down the next measurement."""
    pids = [pid for server in servers for pid in (server.process.pid, *children(server.process.pid))]
    deadline = time.monotonic() + timeout
    used = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pids)
        if now - used < 0.025:  # under a tenth of a core
            return
        used = now
    print(f"  (servers still busy after {timeout:g}s; measuring anyway)", flush=True)


# The run


@dataclass
class Options:
    dbs: list[str]
    servers: list[str]
    apps: list[str]
    scenarios: list[str]
    duration: float
    warmup: float
    repeats: int
    connections: int
    token_connections: int
    threads: int
    bcrypt_rounds: int
    users: int
    todos: int
    postgres_url: str
    out: Path
    latency: bool = False
    latency_duration: float = 5
    latency_rate: str = "own"  # "own": half each app's maximum; "slowest": half the slowest app's, for all


def bench(
    options: Options, db: str, workdir: Path
) -> tuple[list[Measurement], list[dict[str, Any]], list[dict[str, Any]]]:
    database_url = bench_database_url(db, options.postgres_url, workdir)
    key = security.new_secret_key()
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        secret_key=key,
        bcrypt_rounds=options.bcrypt_rounds,
    )
    started = time.monotonic()
    data = seed(settings, users=options.users, todos=options.todos)
    print(f"# {db}: seeded {options.users} users and {options.todos} todos in {time.monotonic() - started:.1f}s")
    tokens = security.TokenCodec(key, 24 * 3600)
    chosen = [scenario for scenario in scenarios(data, tokens) if scenario.name in options.scenarios]
    token = next(scenario for scenario in scenarios(data, tokens) if scenario.kind == "token")
    health = next(scenario for scenario in scenarios(data, tokens) if scenario.name == "health")
    env = server_env(database_url, SECRET_KEY=key, BCRYPT_ROUNDS=str(options.bcrypt_rounds), LOG_LEVEL="warning")
    results: list[Measurement] = []
    memories: list[dict[str, Any]] = []
    latencies: list[dict[str, Any]] = []
    for server in options.servers:
        with running(options.apps, server, env) as apps:
            for instance in apps.values():
                for scenario in chosen:
                    check(instance.url, scenario)
                if options.warmup > 0:
                    for scenario in chosen:
                        run = wrk(instance.url, scenario, duration=options.warmup, connections=4, threads=1)
                        wrk_result(run, timeout=options.warmup + 60)
            for repeat in range(options.repeats):
                for scenario in chosen:
                    for app, instance in apps.items():
                        settle(list(apps.values()))
                        connections = options.token_connections if scenario.kind == "token" else options.connections
                        pids = [instance.process.pid, *children(instance.process.pid)]
                        cpu_before = cpu_seconds(pids)
                        run = wrk(
                            instance.url,
                            scenario,
                            duration=options.duration,
                            connections=connections,
                            threads=options.threads,
                        )
                        raw = wrk_result(run, timeout=options.duration + 120)
                        done = measurement(raw, db=db, server=server, app=app, scenario=scenario.name, repeat=repeat)
                        done.cpu_us = (cpu_seconds(pids) - cpu_before) * 1e6 / max(done.requests, 1)
                        results.append(done)
                        print(_progress(done), flush=True)
                if "token" in options.scenarios:
                    for app, instance in apps.items():
                        settle(list(apps.values()))
                        results.extend(saturated(options, instance, token, health, db, server, app, repeat))
                        print(_progress(results[-2]), flush=True)
            if options.latency:
                latencies += fixed_load(options, apps, chosen, results, db=db, server=server)
            for app, instance in apps.items():
                memories.append({"db": db, "server": server, "app": app, **memory(instance)})
    return results, memories, latencies


def saturated(
    options: Options,
    instance: Server,
    token: Scenario,
    health: Scenario,
    db: str,
    server: str,
    app: str,
    repeat: int,
) -> list[Measurement]:
    """`GET /health` on two connections while token requests keep bcrypt busy on every core."""
    load = wrk(instance.url, token, duration=options.duration + 2, connections=options.token_connections, threads=1)
    time.sleep(1)
    probe = wrk(instance.url, health, duration=options.duration, connections=2, threads=1)
    probed = wrk_result(probe, timeout=options.duration + 120)
    loaded = wrk_result(load, timeout=options.duration + 120)
    return [
        measurement(probed, db=db, server=server, app=app, scenario=SATURATION, repeat=repeat),
        measurement(loaded, db=db, server=server, app=app, scenario="token (under the health probe)", repeat=repeat),
    ]


def fixed_load(
    options: Options,
    apps: dict[str, Server],
    chosen: Sequence[Scenario],
    results: Sequence[Measurement],
    *,
    db: str,
    server: str,
) -> list[dict[str, Any]]:
    """Each scenario on each app at a constant rate: half the median requests/s it reached,
    or (latency_rate "slowest") half of the slowest app's, the same for every app."""
    done = []
    for scenario in chosen:
        maxima = {
            app: statistics.median(
                [m.rps for m in results if (m.db, m.server, m.app, m.scenario) == (db, server, app, scenario.name)]
            )
            for app in apps
        }
        for app, instance in apps.items():
            rate = (min(maxima.values()) if options.latency_rate == "slowest" else maxima[app]) / 2
            if rate <= 0:
                continue
            settle(list(apps.values()))
            connections = options.token_connections if scenario.kind == "token" else options.connections
            latency = constant_rate.measure(
                instance.url, _request(scenario), rate=rate, duration=options.latency_duration, connections=connections
            )
            row = {"db": db, "server": server, "app": app, "scenario": scenario.name, **asdict(latency)}
            done.append(row)
            errors = f"  ERRORS {latency.errors}" if latency.errors else ""
            print(
                f"  {db:10} {server:8} fixed load {scenario.name:24} {app:9} {rate:9.1f} req/s offered"
                f"  p50 {latency.p50_ms:7.2f} ms  p99 {latency.p99_ms:7.2f} ms{errors}",
                flush=True,
            )
    return done


def _request(scenario: Scenario) -> constant_rate.Request:
    headers = {"Authorization": f"Bearer {scenario.token}"} if scenario.token else {}
    if scenario.content_type:
        headers["Content-Type"] = scenario.content_type
    paths = [f"{scenario.path}{one}" for one in scenario.ids] if scenario.ids else [scenario.path]
    return constant_rate.Request(scenario.method, paths, headers, scenario.body.encode(), scenario.expect)


def latency_table(latencies: list[dict[str, Any]], options: Options) -> str:
    lines = [
        f"latency at a constant offered load of half {_whose(options)} median req/s, {options.latency_duration:g} s,"
        " counted from each request's scheduled send time (coordinated omission included)",
        f"{'db':11}{'server':10}{'scenario':26}{'app':11}{'offered/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for row in latencies:
        lines.append(
            f"{row['db']:11}{row['server']:10}{row['scenario']:26}{row['app']:11}{row['rate']:11.1f}"
            f"{row['p50_ms']:9.2f}{row['p99_ms']:9.2f}{row['errors']:8d}"
        )
    return "\n".join(lines)


def _whose(options: Options) -> str:
    return "the slowest app's (the same rate for all)" if options.latency_rate == "slowest" else "each app's"


def _progress(done: Measurement) -> str:
    errors = f"  ERRORS {done.error_detail}" if done.errors else ""
    return (
        f"  {done.db:10} {done.server:8} #{done.repeat + 1} {done.scenario:24} {done.app:9}"
        f" {done.rps:9.1f} req/s  p50 {done.p50_ms:7.2f} ms  p99 {done.p99_ms:7.2f} ms{errors}"
    )


# Summary, table, chart


def summarise(results: list[Measurement], memories: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per database and server: per scenario and app the medians over repeats, and the ratios."""
    blocks = []
    for db, server in dict.fromkeys((m.db, m.server) for m in results):
        rows = []
        ours = [m for m in results if (m.db, m.server) == (db, server)]
        for scenario in dict.fromkeys(m.scenario for m in ours):
            row: dict[str, Any] = {"scenario": scenario, "apps": {}}
            for app in dict.fromkeys(m.app for m in ours):
                runs = [m for m in ours if (m.scenario, m.app) == (scenario, app)]
                row["apps"][app] = {
                    "rps": statistics.median(m.rps for m in runs),
                    "p50_ms": statistics.median(m.p50_ms for m in runs),
                    "p99_ms": statistics.median(m.p99_ms for m in runs),
                    "cpu_us": statistics.median(m.cpu_us for m in runs),
                    "errors": sum(m.errors for m in runs),
                    "min_requests": min(m.requests for m in runs),
                    "repeats": len(runs),
                }
            apps = row["apps"]
            for other in _others(apps):
                if "asgi_todo" in apps and apps[other]["rps"] > 0:
                    row[f"asgi_todo/{other}"] = apps["asgi_todo"]["rps"] / apps[other]["rps"]
                if "asgi_todo" in apps and apps[other]["cpu_us"] > 0:
                    row[f"cpu asgi_todo/{other}"] = apps["asgi_todo"]["cpu_us"] / apps[other]["cpu_us"]
            rows.append(row)
        memory = {m["app"]: m for m in memories if (m["db"], m["server"]) == (db, server)}
        blocks.append({"db": db, "server": server, "scenarios": rows, "memory": memory})
    return blocks


def _others(apps: Sequence[str]) -> list[str]:
    """The apps that asgi_todo is compared with, in the order given."""
    return [app for app in apps if app != "asgi_todo"]


def table(blocks: list[dict[str, Any]], options: Options) -> str:
    lines = []
    few = False
    for block in blocks:
        apps = list(block["memory"]) or list(block["scenarios"][0]["apps"])
        lines.append(
            f"{block['db']} · {SERVERS[block['server']]} · median of {options.repeats} x {options.duration:g} s"
            f" · wrk -c{options.connections} (token: -c{options.token_connections}, bcrypt {options.bcrypt_rounds})"
        )
        others = _others(apps)
        lines.append(f"{'':36}" + "".join(f"{app:^26}" for app in apps) + f"{'asgi_todo /':>26}")
        lines.append(
            f"{'scenario':36}" + f"{'req/s':>10}{'p50 ms':>8}{'p99 ms':>8}" * len(apps)
            + "".join(f"{other[:20]:>21}" for other in others) + f"{'errors':>8}"
        )  # fmt: skip
        for row in block["scenarios"]:
            cells = f"{row['scenario']:36}"
            for app in apps:
                value = row["apps"].get(app)
                if value is None:
                    cells += " " * 26
                    continue
                mark = "*" if value["min_requests"] < FEW_REQUESTS else " "
                few = few or mark == "*"
                cells += f"{value['rps']:9,.1f}{mark}{value['p50_ms']:8.1f}{value['p99_ms']:8.1f}"
            for other in others:
                ratio = row.get(f"asgi_todo/{other}")
                cells += f"{ratio:21.3f}" if ratio is not None else " " * 21
            cells += f"{sum(value['errors'] for value in row['apps'].values()):8d}"
            lines.append(cells)
        lines.append(
            f"{'CPU per request (us)':36}" + "".join(f"{app[:12]:>13}" for app in apps)
            + "".join(f"{'asgi_todo/' + other[:10]:>22}" for other in others)
        )  # fmt: skip
        for row in block["scenarios"]:
            cells = f"{row['scenario']:36}"
            cells += "".join(f"{row['apps'][app]['cpu_us']:13,.0f}" if app in row["apps"] else " " * 13 for app in apps)
            for other in others:
                ratio = row.get(f"cpu asgi_todo/{other}")
                cells += f"{ratio:22.3f}" if ratio is not None else " " * 22
            lines.append(cells)
        memory = " · ".join(
            f"{app} {m['per_worker_mb']:.0f} MB per worker ({m['total_mb']:.0f} MB in all)"
            for app, m in block["memory"].items()
        )
        lines.append(f"peak RSS: {memory}")
        lines.append("")
    if few:
        lines.append(f"* a run of it completed fewer than {FEW_REQUESTS} requests: give it a longer --duration")
    return "\n".join(lines)


def chart(blocks: list[dict[str, Any]], options: Options, path: Path, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(blocks), 1, figsize=(13, 4.2 * len(blocks)), squeeze=False)
    for axis, block in zip(axes[:, 0], blocks, strict=True):
        rows = [row for row in block["scenarios"] if row["scenario"] in CHARTED]
        apps = list(rows[0]["apps"])
        width = 0.8 / len(apps)
        for index, app in enumerate(apps):
            xs = [position + (index - (len(apps) - 1) / 2) * width for position in range(len(rows))]
            values = [row["apps"].get(app, {}).get("rps", 0.0) for row in rows]
            bars = axis.bar(xs, values, width, label=app, color=COLOURS.get(app))
            labels = [f"{value:,.0f}" if value >= 10 else f"{value:.1f}" for value in values]
            axis.bar_label(bars, labels=labels, fontsize=7, padding=1)
        axis.set_xticks(range(len(rows)), [row["scenario"] for row in rows], fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("requests/s (log)")
        axis.set_title(f"{block['db']} · {SERVERS[block['server']]}", fontsize=10)
        axis.legend(fontsize=8, loc="upper left", ncol=len(apps))
        axis.margins(y=0.15)
    figure.suptitle(
        "asgi_todo vs the FastAPI and Litestar twins vs bare-ASGI ceiling ·"
        f" median of {options.repeats} x {options.duration:g} s,"
        f" wrk -c{options.connections} · {stamp}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(terse=True),
        "wrk": wrk_version.split("Copyright")[0].strip(),
    }


def report_head(stamp: str, options: Any) -> dict[str, Any]:
    """What every report starts with: when, on what, with which options (no database URL)."""
    return {
        "date": stamp,
        "machine": machine(),
        "options": {**asdict(options), "out": str(options.out), "postgres_url": "(not recorded)"},
    }


def write_report(
    out: Path,
    names: tuple[str, str, str],
    text: str,
    report: dict[str, Any],
    draw: Callable[[Path], None],
    failed: list[str],
) -> int:
    """Prints the table, writes it, the report and the chart into `out` (`names` in that
    order); the exit status: 1 when any request erred, each one listed on standard error."""
    table_file, report_file, chart_file = (out / name for name in names)
    print()
    print(text)
    table_file.write_text(text.rstrip("\n") + "\n")
    report_file.write_text(json.dumps(report, indent=2))
    draw(chart_file)
    print(f"wrote {report_file}, {table_file}, {chart_file}")
    if failed:
        print("FAILED: requests erred (non-2xx or socket errors):", *failed, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def failures(results: list[Measurement]) -> list[str]:
    return [f"{m.db} {m.server} {m.app} {m.scenario} #{m.repeat + 1}: {m.error_detail}" for m in results if m.errors]


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--servers", choices=["uvicorn", "gunicorn", "both"], default="uvicorn")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated, from: " + ", ".join(APPS))
    parser.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of warm-up per app and scenario")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument(
        "--token-connections", type=int, default=4, help="for the token request: bcrypt-bound, few suffice (4)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: wrk shares the cores)")
    parser.add_argument("--bcrypt-rounds", type=int, default=12, help="for every app (default 12, the service's)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--todos", type=int, default=10000)
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL, help="a database to create the bench one from")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--latency", action="store_true", help="then p50/p99 at half each app's maximum, at a constant rate"
    )
    parser.add_argument("--latency-duration", type=float, default=5, help="seconds per fixed-load run (default 5)")
    parser.add_argument(
        "--latency-rate",
        choices=["own", "slowest"],
        default="own",
        help="the fixed rate: half each app's own maximum (default), or half the slowest app's for every app",
    )
    args = parser.parse_args(argv)
    names_only = Seed(1, (1,), 2, (2,), 3, "", logins={1: "", 2: "", 3: ""})
    every = [scenario.name for scenario in scenarios(names_only, _codec())]
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()] or every
    apps = [app.strip() for app in args.apps.split(",") if app.strip()]
    unknown = [name for name in chosen if name not in every] + [app for app in apps if app not in APPS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (scenarios: {', '.join(every)})")
    if args.users < 4 or args.todos < 2 * PATCHER_TODOS:
        parser.error(f"--users must be at least 4 and --todos at least {2 * PATCHER_TODOS}")
    return Options(
        dbs=["sqlite", "postgresql"] if args.db == "both" else [args.db],
        servers=["uvicorn", "gunicorn"] if args.servers == "both" else [args.servers],
        apps=apps,
        scenarios=chosen,
        duration=args.duration,
        warmup=args.warmup,
        repeats=args.repeats,
        connections=args.connections,
        token_connections=args.token_connections,
        threads=args.threads,
        bcrypt_rounds=args.bcrypt_rounds,
        users=args.users,
        todos=args.todos,
        postgres_url=args.postgres_url,
        out=args.out,
        latency=args.latency,
        latency_duration=args.latency_duration,
        latency_rate=args.latency_rate,
    )


def _codec() -> security.TokenCodec:
    return security.TokenCodec(security.new_secret_key(), 60)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results: list[Measurement] = []
    memories: list[dict[str, Any]] = []
    latencies: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="asgi_todo-bench-") as workdir:
        for db in options.dbs:
            done, used, fixed = bench(options, db, Path(workdir))
            results += done
            memories += used
            latencies += fixed
    blocks = summarise(results, memories)
    text = table(blocks, options)
    if latencies:
        text += "\n" + latency_table(latencies, options) + "\n"
    report = {
        **report_head(stamp, options),
        "summary": blocks,
        "latency": latencies,
        "runs": [asdict(m) for m in results],
    }
    failed = failures(results) + [
        f"{row['db']} {row['server']} {row['app']} {row['scenario']} at a fixed load: {row['errors']} errors"
        for row in latencies
        if row["errors"]
    ]
    names = ("table.txt", "results.json", "requests.png")
    return write_report(options.out, names, text, report, partial(chart, blocks, options, stamp=stamp), failed)


if __name__ == "__main__":
    sys.exit(main())
