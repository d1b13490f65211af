"""The metrics picture of the docs (Operations, "Metrics and traces"), from a real load run
watched by a real Prometheus.

    python -m tests.bench.observe --duration 60 --out tests/bench/results/metrics.png

It starts asgi_todo under gunicorn (start.sh, 2 workers, SQLite, demo data, metrics on their
own port), Debian's Prometheus scraping that port every second, and `wrk` with the mixed
read/write script; halfway it kills one worker with SIGKILL. Then it asks Prometheus for the
request rate, the p99 latency and the 5xx rate over the run and draws them. It prints the
totals that Prometheus saw beside what wrk sent. A tool, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx

from asgi_todo import __version__
from tests.servers import free_port, server_env, start_gunicorn, stop_all, wait_for_workers

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE.parent / "wrk_mixed.lua"
LOAD = 'route!="/metrics"'  # every request but Prometheus' own scrapes
TOTAL = f"sum(asgi_todo_http_requests_total{{{LOAD}}})"
QUERIES = {
    "requests/s": f"sum(rate(asgi_todo_http_requests_total{{{LOAD}}}[5s]))",
    "p99 latency (ms)": (
        f"histogram_quantile(0.99, sum by (le) (rate(asgi_todo_http_request_duration_seconds_bucket{{{LOAD}}}[5s])))"
        " * 1000"
    ),
    "5xx/s": 'sum(rate(asgi_todo_http_requests_total{status="5xx"}[5s])) or vector(0)',
}


def prometheus(directory: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "asgi_todo", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("prometheus did not become ready")


def query_range(url: str, query: str, start: float, end: float) -> list[tuple[float, float]]:
    response = httpx.get(
        url + "/api/v1/query_range", params={"query": query, "start": start, "end": end, "step": "1s"}, timeout=30
    )
    response.raise_for_status()
    result = response.json()["data"]["result"]
    if not result:
        return []
    return [(float(t), float(v)) for t, v in result[0]["values"] if v not in ("NaN", "+Inf", "-Inf")]


def query(url: str, expression: str, at: float) -> float:
    response = httpx.get(url + "/api/v1/query", params={"query": expression, "time": at}, timeout=30)
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def draw(series: dict[str, list[tuple[float, float]]], start: float, killed: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(series), 1, figsize=(10, 2.6 * len(series)), sharex=True)
    for axis, (name, points) in zip(axes, series.items(), strict=True):
        axis.plot([t - start for t, _ in points], [v for _, v in points], color="#2b7bba")
        axis.axvline(killed - start, color="#c0392b", linestyle="--", linewidth=1)
        axis.set_ylabel(name)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].annotate("worker killed (SIGKILL)", (killed - start, 0), xytext=(4, 4), textcoords="offset points",
                     color="#c0392b", fontsize=8)  # fmt: skip
    axes[-1].set_xlabel("seconds")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.observe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "metrics.png")
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="asgi_todo-observe-"))
    metrics_port = free_port()
    env = server_env(
        f"sqlite:///{directory / 'todo.db'}", RESET_DB="1", METRICS_PORT=str(metrics_port), LOG_LEVEL="warning",
        ACCESS_LOG="off", BCRYPT_ROUNDS="4",
    )  # fmt: skip
    server = start_gunicorn(env, workers=2)
    watcher: subprocess.Popen[bytes] | None = None
    try:
        server.wait_healthy()
        workers = wait_for_workers(server, 2)
        token = httpx.post(
            server.url + "/api/auth/token", data={"username": "alice@example.com", "password": "secret2"}, timeout=10
        ).json()["access_token"]
        todo_id = httpx.get(server.url + "/api/todos", headers={"Authorization": f"Bearer {token}"}).json()[0]["id"]
        watcher, prometheus_url = prometheus(directory, f"127.0.0.1:{metrics_port}")
        time.sleep(3)
        before = query(prometheus_url, TOTAL, time.time())
        start = time.time()
        load = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration:g}s", "-s", str(WRK_SCRIPT), server.url],
            env={**os.environ, "WRK_TOKEN": token, "WRK_TODO_ID": str(todo_id)},
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(args.duration / 2)
        killed = time.time()
        os.kill(sorted(workers)[0], signal.SIGKILL)
        output, _ = load.communicate(timeout=args.duration + 60)
        time.sleep(4)
        end = time.time()
        sent = next(json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("WRK_RESULT"))
        seen = query(prometheus_url, TOTAL, end) - before
        series = {name: query_range(prometheus_url, expression, start - 2, end) for name, expression in QUERIES.items()}
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        title = (
            f"asgi_todo {__version__} · gunicorn, 2 uvicorn workers, SQLite · wrk -c{args.connections}, mixed reads and"
            f" writes · Prometheus scraping every 1 s · {stamp}\nwrk completed {sent['requests']:,} requests,"
            f" {sent['non2xx']} non-2xx, {sent['read']} connections cut by the kill;"
            f" Prometheus counted {seen:,.0f} answered"
        )
        draw(series, start, killed, args.out, title)
        print(f"wrk: {json.dumps(sent)}")
        print(f"prometheus counted {seen:.0f} requests answered during the load; wrote {args.out}")
        return 0
    finally:
        if watcher is not None:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(30)
        stop_all([server])


if __name__ == "__main__":
    sys.exit(main())
