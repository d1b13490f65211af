"""Cost as the data grows (docs: Benchmark): asgi_todo's requests/s against the rows in the table.

    python -m tests.bench.rows --rows 10,10000,1000000 --db both --duration 5 --repeats 3

For each database and each size it seeds a fresh database (the demo data, 1,000 users, then
that many todos in one statement: PostgreSQL's generate_series, SQLite's recursive CTE; one
in ten is the bench caller's, interleaved, so 100,000 of 1,000,000; all of them at the
smallest size), ANALYZEs it, and starts asgi_todo on each (uvicorn, one worker). Then it
drives each scenario with wrk, interleaving the sizes (small, middle, large, small, ...) and
repeating, so that the machine's noise falls on every size alike.

Page requests, whose lines should stay flat: the first page of 10, a page of 10 deep in the
caller's todos by `after_id`, a todo by id, `GET /auth/me`. Drawn apart, as they grow with
the data by nature: the same deep page by `offset`, `count=true` on the caller's todos and
the superuser's `count=true` over every todo. Writes OUT/rows.json, OUT/rows.txt and
OUT/rows.png. It is a tool, not a test: only ratios from one interleaved run mean anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from asgi_todo import security
from asgi_todo.db import make_engine
from asgi_todo.models import Login, User, UTCDateTime, utcnow
from asgi_todo.settings import Settings
from asgi_todo.startup import prepare
from tests.bench.run import (
    PREFIX,
    UVICORN_OPTIONS,
    Measurement,
    Scenario,
    check,
    failures,
    fresh_database,
    measurement,
    report_head,
    settle,
    write_report,
    wrk,
    wrk_result,
)
from tests.helpers import POSTGRES_ADMIN_URL, analyze
from tests.servers import Server, server_env, start_uvicorn, stop_all

USERS = 1000
STRIDE = 10  # one todo in STRIDE is the caller's
PAGE = 10
SAMPLE = 1000  # todos a "get" scenario picks from, spread over the caller's
PAGES = ("list: first page", "list: after_id deep", "get a todo", "me")
GROWING = ("list: offset deep", "count=true (own todos)", "count=true (superuser, all todos)")
_SEED = {
    "postgresql": "FROM generate_series(1, :rows) AS s(n)",
    "sqlite": "FROM (WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :rows) SELECT n FROM s)",
}


@dataclass(frozen=True)
class Seeded:
    rows: int
    url: str
    caller: int
    owned: int
    logins: dict[int, str]
    sample: tuple[int, ...]  # some of the caller's todo ids, spread evenly
    deep_after: int  # the id before the caller's last PAGE todos
    seconds: float


def seed(settings: Settings, rows: int) -> Seeded:
    """The demo data, USERS bench users, `rows` todos in one INSERT ... SELECT, ANALYZE."""
    started = time.monotonic()
    prepare(settings.model_copy(update={"reset_db": True}), start=f"rows-{uuid.uuid4().hex}", force=True)
    now = utcnow()
    engine = make_engine(settings, pool_size=1)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.insert(User),
                [
                    {"email": f"rows{n:05d}@example.com", "hashed_password": "-", "fname": "Bench", "lname": str(n),
                     "is_superuser": False, "created_at": now, "updated_at": now}
                    for n in range(USERS)
                ],
            )  # fmt: skip
            ids = connection.scalars(sa.select(User.id).where(User.email.like("rows%")).order_by(User.id)).all()
            caller, others = ids[0], ids[1:]
            assert list(others) == list(range(others[0], others[0] + len(others)))  # one executemany: in a row
            stride = STRIDE if rows >= STRIDE * PAGE else 1
            insert = sa.text(
                "INSERT INTO todos (text, completed, owner_id, created_at, updated_at, version)"
                " SELECT 'Todo ' || n, n % 3 = 0,"
                " CASE WHEN n % :stride = 0 THEN :caller ELSE :first + n % :others END, :now, :now, 1 "
                + _SEED[connection.dialect.name]
            ).bindparams(sa.bindparam("now", type_=UTCDateTime()))
            values = {"rows": rows, "stride": stride, "caller": caller, "first": others[0], "others": len(others)}
            connection.execute(insert, {**values, "now": now})
            owned = connection.scalars(sa.text("SELECT id FROM todos WHERE owner_id = :id ORDER BY id"), {"id": caller})
            mine = owned.all()
            logins = {user_id: uuid.uuid4().hex for user_id in (caller, 1)}  # 1: the demo superuser
            connection.execute(
                sa.insert(Login),
                [
                    {"id": login, "user_id": user_id, "client": "bench", "created_at": now}
                    for user_id, login in logins.items()
                ],
            )
        analyze(engine)
    finally:
        engine.dispose()
    step = max(1, len(mine) // SAMPLE)
    deep_after = mine[-PAGE - 1] if len(mine) > PAGE else mine[0] - 1
    return Seeded(
        rows=rows,
        url=settings.database_url,
        caller=caller,
        owned=len(mine),
        logins=logins,
        sample=tuple(mine[::step]),
        deep_after=deep_after,
        seconds=time.monotonic() - started,
    )


def scenarios(seeded: Seeded, tokens: security.TokenCodec) -> list[Scenario]:
    caller = tokens.issue(seeded.caller, login=seeded.logins[seeded.caller])
    superuser = tokens.issue(1, login=seeded.logins[1])
    todos = f"{PREFIX}/todos/"
    offset = max(0, seeded.owned - PAGE)
    return [
        Scenario("list: first page", "read", "GET", f"{todos}?limit={PAGE}", token=caller),
        Scenario(
            "list: after_id deep", "read", "GET", f"{todos}?limit={PAGE}&after_id={seeded.deep_after}", token=caller
        ),
        Scenario("get a todo", "read", "GET", todos, token=caller, ids=seeded.sample),
        Scenario("me", "read", "GET", f"{PREFIX}/auth/me", token=caller),
        Scenario("list: offset deep", "read", "GET", f"{todos}?limit={PAGE}&offset={offset}", token=caller),
        Scenario("count=true (own todos)", "read", "GET", f"{todos}?limit={PAGE}&count=true", token=caller),
        Scenario(
            "count=true (superuser, all todos)", "read", "GET", f"{todos}?limit={PAGE}&count=true", token=superuser
        ),
    ]


@contextmanager
def serving(seeds: Sequence[Seeded], key: str) -> Iterator[dict[int, Server]]:
    started: dict[int, Server] = {}
    try:
        for seeded in seeds:
            env = server_env(seeded.url, SECRET_KEY=key, LOG_LEVEL="warning")
            started[seeded.rows] = start_uvicorn(env, options=UVICORN_OPTIONS)
        for server in started.values():
            server.wait_healthy(timeout=120)
        yield started
    finally:
        stop_all(list(started.values()))


@dataclass
class Options:
    dbs: list[str]
    rows: list[int]
    duration: float
    warmup: float
    repeats: int
    connections: int
    postgres_url: str
    out: Path


def bench(options: Options, db: str, workdir: Path) -> tuple[list[Measurement], list[Seeded]]:
    key = security.new_secret_key()
    with ExitStack() as databases:
        urls = []
        for rows in options.rows:
            database = fresh_database(
                db,
                sqlite_file=workdir / f"rows-{rows}.db",
                name=f"asgi_todo_bench_rows_{rows}",
                admin_url=options.postgres_url,
            )
            urls.append(databases.enter_context(database))
        return _bench(options, db, key, urls)


def _bench(options: Options, db: str, key: str, urls: list[str]) -> tuple[list[Measurement], list[Seeded]]:
    tokens = security.TokenCodec(key, 24 * 3600)
    seeds = []
    for rows, url in zip(options.rows, urls, strict=True):
        seeded = seed(Settings(_env_file=None, database_url=url, secret_key=key), rows)
        print(f"# {db}: {rows:,} todos ({seeded.owned:,} the caller's) seeded in {seeded.seconds:.1f}s", flush=True)
        seeds.append(seeded)
    results: list[Measurement] = []
    with serving(seeds, key) as servers:
        chosen = {seeded.rows: scenarios(seeded, tokens) for seeded in seeds}
        for rows, server in servers.items():
            for scenario in chosen[rows]:
                check(server.url, scenario)
                if options.warmup > 0:
                    run = wrk(server.url, scenario, duration=options.warmup, connections=4, threads=1)
                    wrk_result(run, timeout=options.warmup + 60)
        names = [scenario.name for scenario in chosen[options.rows[0]]]
        for repeat in range(options.repeats):
            for index, name in enumerate(names):
                for rows, server in servers.items():
                    settle(list(servers.values()))
                    scenario = chosen[rows][index]
                    run = wrk(
                        server.url, scenario, duration=options.duration, connections=options.connections, threads=1
                    )
                    raw = wrk_result(run, timeout=options.duration + 120)
                    done = measurement(raw, db=db, server="uvicorn", app=str(rows), scenario=name, repeat=repeat)
                    results.append(done)
                    print(
                        f"  {db:10} #{repeat + 1} {name:34} {rows:>9,} rows {done.rps:9.1f} req/s"
                        f"  p50 {done.p50_ms:8.2f} ms{'  ERRORS ' + str(done.error_detail) if done.errors else ''}",
                        flush=True,
                    )
    return results, seeds


def summarise(results: Sequence[Measurement], rows: Sequence[int]) -> list[dict[str, Any]]:
    """Per database and scenario: median req/s and p50 per size, and largest / smallest."""
    summary = []
    for db, name in dict.fromkeys((m.db, m.scenario) for m in results):
        sizes = {}
        for size in rows:
            runs = [m for m in results if (m.db, m.scenario, m.app) == (db, name, str(size))]
            sizes[size] = {
                "rps": statistics.median(m.rps for m in runs),
                "p50_ms": statistics.median(m.p50_ms for m in runs),
                "errors": sum(m.errors for m in runs),
            }
        first, last = sizes[rows[0]]["rps"], sizes[rows[-1]]["rps"]
        summary.append({"db": db, "scenario": name, "sizes": sizes, "largest/smallest": last / first if first else 0})
    return summary


def table(summary: Sequence[dict[str, Any]], options: Options) -> str:
    rows = options.rows
    head = f"median of {options.repeats} x {options.duration:g} s, wrk -c{options.connections}, uvicorn 1 worker"
    lines = [f"req/s (p50 ms) against the todos in the table · {head}"]
    lines.append(f"{'db':11}{'scenario':36}" + "".join(f"{size:>20,}" for size in rows) + f"{'largest/smallest':>18}")
    for row in summary:
        cells = "".join(f"{row['sizes'][size]['rps']:11,.1f} ({row['sizes'][size]['p50_ms']:6.1f})" for size in rows)
        errors = sum(value["errors"] for value in row["sizes"].values())
        lines.append(
            f"{row['db']:11}{row['scenario']:36}{cells}{row['largest/smallest']:18.2f}"
            + (f"  ERRORS {errors}" if errors else "")
        )
    return "\n".join(lines)


def chart(summary: Sequence[dict[str, Any]], options: Options, path: Path, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dbs = list(dict.fromkeys(row["db"] for row in summary))
    figure, axes = plt.subplots(len(dbs), 2, figsize=(13, 4.4 * len(dbs)), squeeze=False)
    for line, db in zip(axes, dbs, strict=True):
        for axis, names, title in ((line[0], PAGES, "page requests"), (line[1], GROWING, "offset and counts")):
            for row in summary:
                if row["db"] != db or row["scenario"] not in names:
                    continue
                values = [row["sizes"][size]["rps"] for size in options.rows]
                axis.plot(options.rows, values, marker="o", label=f"{row['scenario']} ({row['largest/smallest']:.2f}x)")
            axis.set_xscale("log")
            axis.set_xlabel("todos in the table (log)")
            if names == PAGES:  # linear from 0: flat reads as flat
                axis.set_ylim(bottom=0)
                axis.set_ylabel("requests/s")
            else:
                axis.set_yscale("log")
                axis.set_ylabel("requests/s (log)")
            axis.set_title(f"{db} · {title}", fontsize=10)
            axis.legend(fontsize=8)
            axis.grid(True, which="both", alpha=0.3)
    figure.suptitle(
        f"asgi_todo req/s against rows · uvicorn 1 worker · median of {options.repeats} x {options.duration:g} s,"
        f" wrk -c{options.connections} · legend: largest/smallest · {stamp}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.rows", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--rows", default="10,10000,1000000", help="comma-separated todo counts (10,10000,1000000)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of warm-up per size and scenario")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL, help="a database to create the bench ones from")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    rows = sorted({int(value) for value in args.rows.split(",") if value.strip()})
    if not rows or rows[0] < PAGE:
        parser.error(f"--rows: each at least {PAGE}")
    return Options(
        dbs=["sqlite", "postgresql"] if args.db == "both" else [args.db],
        rows=rows,
        duration=args.duration,
        warmup=args.warmup,
        repeats=args.repeats,
        connections=args.connections,
        postgres_url=args.postgres_url,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results: list[Measurement] = []
    seeds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="asgi_todo-rows-") as workdir:
        for db in options.dbs:
            done, seeded = bench(options, db, Path(workdir))
            results += done
            seeds += [
                {"db": db, **{k: v for k, v in asdict(s).items() if k in ("rows", "owned", "seconds")}} for s in seeded
            ]
    summary = summarise(results, options.rows)
    text = table(summary, options)
    report = {**report_head(stamp, options), "seeded": seeds, "summary": summary, "runs": [asdict(m) for m in results]}
    names = ("rows.txt", "rows.json", "rows.png")
    return write_report(
        options.out, names, text, report, partial(chart, summary, options, stamp=stamp), failed=failures(results)
    )


if __name__ == "__main__":
    sys.exit(main())
