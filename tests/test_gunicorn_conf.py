"""gunicorn's configuration, and the service under real gunicorn masters on loopback:
start-up once, tokens across workers, several masters, kill -9, SIGTERM, a database that goes
away and comes back, logs, and a load run with wrk."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from asgi_todo import __version__
from asgi_todo.gunicorn_conf import read
from asgi_todo.settings import ConfigError

from .deployfiles import GUNICORN_VARIABLES, START_VARIABLES
from .helpers import ALICE, JOHN, Workers, require, scalar, server_login
from .servers import (
    START_SH,
    WRK_SCRIPT,
    Server,
    children,
    free_port,
    rss_kib,
    server_env,
    start,
    start_gunicorn,
    start_script,
    stop_all,
    wait_for_workers,
)

_LAUNCH_VARIABLES = GUNICORN_VARIABLES | START_VARIABLES | {"GUNICORN_CMD_ARGS"}


@pytest.fixture(autouse=True)
def _clean_launch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers started here must not pick up the developer's gunicorn or start.sh settings."""
    for name in _LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# The configuration itself


def test_defaults_are_the_original_images() -> None:
    options = read({}, cores=2)
    assert options.bind == ["0.0.0.0:8000"]
    assert options.workers == 2
    assert (options.timeout, options.graceful_timeout, options.keepalive) == (120, 120, 5)
    assert (options.accesslog, options.errorlog) == ("-", "-")
    assert options.forwarded_allow_ips == ["127.0.0.1", "::1"]


@pytest.mark.parametrize(
    ("environ", "cores", "workers"),
    [
        pytest.param({}, 1, 2, id="at-least-two"),
        pytest.param({}, 8, 8, id="one-per-core"),
        pytest.param({"WORKERS_PER_CORE": "2"}, 4, 8, id="per-core"),
        pytest.param({"WORKERS_PER_CORE": "0.5"}, 8, 4, id="half-per-core"),
        pytest.param({"WORKERS_PER_CORE": "4", "MAX_WORKERS": "6"}, 4, 6, id="max-workers"),
        pytest.param({"WEB_CONCURRENCY": "3", "MAX_WORKERS": "2"}, 8, 3, id="web-concurrency-wins"),
        pytest.param({"WEB_CONCURRENCY": "1"}, 8, 1, id="one-worker"),
    ],
)
def test_worker_count(environ: dict[str, str], cores: int, workers: int) -> None:
    assert read(environ, cores=cores).workers == workers


@pytest.mark.parametrize(
    ("environ", "bind"),
    [
        pytest.param({"PORT": "9000"}, ["0.0.0.0:9000"], id="port"),
        pytest.param({"HOST": "127.0.0.1", "PORT": "81"}, ["127.0.0.1:81"], id="host-port"),
        pytest.param({"HOST": "[::1]"}, ["[::1]:8000"], id="ipv6"),
        pytest.param(
            {"BIND": "unix:/run/app.sock, 127.0.0.1:8001", "PORT": "1"},
            ["unix:/run/app.sock", "127.0.0.1:8001"],
            id="bind-wins",
        ),
    ],
)
def test_bind(environ: dict[str, str], bind: list[str]) -> None:
    assert read(environ, cores=2).bind == bind


def test_access_log_off_and_files(tmp_path: Path) -> None:
    assert read({"ACCESS_LOG": ""}, cores=2).accesslog == "-"  # an empty variable is an unset one
    assert read({"ACCESS_LOG": "off"}, cores=2).accesslog is None
    options = read({"ACCESS_LOG": str(tmp_path / "a.log"), "ERROR_LOG": str(tmp_path / "e.log")}, cores=2)
    assert (options.accesslog, options.errorlog) == (str(tmp_path / "a.log"), str(tmp_path / "e.log"))
    assert read({"FORWARDED_ALLOW_IPS": "10.0.0.0/8, 192.0.2.1,*"}, cores=2).forwarded_allow_ips == [
        "10.0.0.0/8",
        "192.0.2.1",
        "*",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("WEB_CONCURRENCY", "0", id="no-workers"),
        pytest.param("WEB_CONCURRENCY", "two", id="workers-text"),
        pytest.param("WORKERS_PER_CORE", "abc", id="per-core-text"),
        pytest.param("WORKERS_PER_CORE", "0", id="per-core-zero"),
        pytest.param("MAX_WORKERS", "-1", id="max-negative"),
        pytest.param("PORT", "70000", id="port-range"),
        pytest.param("PORT", "http", id="port-text"),
        pytest.param("BIND", "localhost", id="bind-no-port"),
        pytest.param("TIMEOUT", "1.5", id="timeout-fraction"),
        pytest.param("GRACEFUL_TIMEOUT", "-1", id="graceful-negative"),
        pytest.param("KEEP_ALIVE", "forever", id="keepalive-text"),
        pytest.param("ACCESS_LOG", "/no/such/dir/access.log", id="access-dir"),
        pytest.param("ERROR_LOG", "/no/such/dir/error.log", id="error-dir"),
        pytest.param("FORWARDED_ALLOW_IPS", "proxy.example", id="allow-ips-name"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read({name: value}, cores=2)
    assert str(caught.value).startswith(f"{name}: ")
    assert "\n" not in str(caught.value)


def _refusal(env: dict[str, str]) -> str:
    """start.sh's standard error when it must refuse to start (it must exit, quickly)."""
    result = subprocess.run(
        [str(START_SH)],
        env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.mkdtemp(prefix="asgi_todo-cwd-"),
    )
    assert result.returncode != 0, result.stderr
    return result.stderr


@pytest.mark.process
@pytest.mark.parametrize(
    ("extra", "starts"),
    [
        pytest.param({"WEB_CONCURRENCY": "two"}, "asgi-todo: WEB_CONCURRENCY: ", id="web-concurrency"),
        pytest.param({"WORKERS_PER_CORE": "lots"}, "asgi-todo: WORKERS_PER_CORE: ", id="gunicorn-variable"),
        pytest.param({"BCRYPT_ROUNDS": "99"}, "asgi-todo: BCRYPT_ROUNDS: ", id="app-setting"),
        pytest.param({"PRE_START_PATH": "/no/such/prestart.sh"}, "asgi-todo: PRE_START_PATH: ", id="prestart"),
        pytest.param({"RESET_DB": "0"}, "asgi-todo: DATABASE_URL: there is no SQLite file ", id="no-database-file"),
        pytest.param({"DEV": "true"}, "asgi-todo: DEV: development runs `asgi-todo serve --reload`", id="dev"),
    ],
)
def test_bad_start_is_one_line(sqlite_url: str, extra: dict[str, str], starts: str) -> None:
    env = server_env(sqlite_url, BIND=f"127.0.0.1:{free_port()}", RESET_DB="1")
    env.update(extra)
    lines = [line for line in _refusal(env).splitlines() if "Starting gunicorn" not in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(starts), lines


@pytest.mark.process
def test_unreachable_database_at_reset_is_one_line() -> None:
    env = server_env(
        f"postgresql://postgres@127.0.0.1:{free_port()}/none", RESET_DB="1", BIND=f"127.0.0.1:{free_port()}"
    )
    lines = [line for line in _refusal(env).splitlines() if "Starting gunicorn" not in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("asgi-todo: DATABASE_URL: cannot use the database: "), lines


# Real masters


def _access_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " asgi_todo.access: " in line]


@pytest.mark.process
def test_four_workers_reset_once_and_any_worker_accepts_a_token(database_url: str) -> None:
    server = start_gunicorn(server_env(database_url, RESET_DB="1"), workers=4)
    try:
        server.wait_healthy()
        master = server.process.pid
        workers = wait_for_workers(server, 4)
        headers = server_login(server.url, *ALICE)

        def me(index: int) -> tuple[int, str]:
            rid = f"fresh-{index}"
            with httpx.Client(base_url=server.url, timeout=30) as http:  # a new connection each time
                response = http.get("/api/auth/me", headers={**headers, "X-Request-ID": rid})
            return response.status_code, rid

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(me, range(64)))
        assert {status for status, _ in answers} == {200}
        forwarded = httpx.get(f"{server.url}/", headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "fwd"})
        assert forwarded.status_code == 200
        users = httpx.get(f"{server.url}/api/users/?count=true", headers=server_login(server.url, *JOHN))
        assert users.headers["X-Total-Count"] == "2"
    finally:
        server.stop()
    output = server.output()
    assert re.search(rf"\[{master}\] asgi_todo\.db: RESET_DB: done", output), output[-3000:]  # the master did it
    assert output.count("RESET_DB: done") == 1
    assert int(scalar(database_url, "SELECT count(*) FROM users")) == 2
    assert int(scalar(database_url, "SELECT count(*) FROM todos")) == 4
    served_by: set[int] = set()
    for line in _access_lines(output):
        found = re.search(r"\[(\d+)\] asgi_todo\.access: .*\[rid=fresh-\d+\]$", line)
        if found:
            served_by.add(int(found.group(1)))
    assert len(served_by) >= 2, "the token was accepted by one worker only"
    assert served_by <= workers
    (line,) = [line for line in _access_lines(output) if line.endswith("[rid=fwd]")]
    assert re.search(r'asgi_todo\.access: 203\.0\.113\.7 "GET / HTTP/1\.1" 200 [\d.]+ms', line), line  # proxy trusted
    assert "SELECT" not in output  # no SQL echo unless asked


@pytest.mark.process
def test_two_masters_on_one_postgres_reset_once_and_respawns_never_reset(postgres_url: str) -> None:
    env = server_env(postgres_url, RESET_DB="1")
    servers = [start_gunicorn(env), start_gunicorn(env)]
    try:
        for server in servers:
            server.wait_healthy()
        headers = server_login(servers[0].url, *ALICE)
        created = httpx.post(f"{servers[0].url}/api/todos/", headers=headers, json={"text": "made on host one"})
        assert created.status_code == 201
        path = f"/api/todos/{created.json()['id']}"
        assert httpx.get(servers[1].url + path, headers=headers).json()["text"] == "made on host one"
        # Long after the start (the one-minute window of db.prepare is over), gunicorn replaces
        # a dead worker on each host: neither replacement may reset.
        engine = sa.create_engine(postgres_url)
        with engine.begin() as connection:
            mark = json.loads(connection.scalar(sa.text("SELECT value FROM app_state WHERE key = 'startup'")))
            mark["at"] -= 3600
            connection.execute(
                sa.text("UPDATE app_state SET value = :v WHERE key = 'startup'"), {"v": json.dumps(mark)}
            )
        engine.dispose()
        for server in servers:
            workers = wait_for_workers(server, 2)
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            wait_for_workers(server, 2, without={victim})
        for server in servers:
            server.wait_healthy()
            for _ in range(8):  # fresh connections, the replacement's included
                assert httpx.get(server.url + path, headers=headers).status_code == 200
    finally:
        stop_all(servers)
    outputs = [server.output() for server in servers]
    assert sum(output.count("RESET_DB: done") for output in outputs) == 1, outputs
    assert sum(output.count("RESET_DB: already done for this start, skipped") for output in outputs) == 1
    assert int(scalar(postgres_url, "SELECT count(*) FROM users")) == 2


class _Load(Workers):
    """Threads that create todos on fresh connections until stopped; every outcome is kept."""

    def __init__(self, server: Server, headers: dict[str, str], *, threads: int = 4) -> None:
        self.server = server
        self.headers = headers
        self.outcomes: list[tuple[float, int | str, int | None]] = []  # (when, status or error, id)
        self._lock = threading.Lock()
        super().__init__(list(range(threads)))

    def _run(self, index: int) -> None:
        sent = 0
        while not self._stop.is_set():
            sent += 1
            outcome: int | str
            created: int | None = None
            try:
                with httpx.Client(base_url=self.server.url, timeout=30) as http:
                    response = http.post("/api/todos/", headers=self.headers, json={"text": f"load {index}-{sent}"})
                outcome = response.status_code
                if outcome == 201:
                    created = int(response.json()["id"])
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            with self._lock:
                self.outcomes.append((time.monotonic(), outcome, created))

    def after(self, moment: float) -> list[int | str]:
        with self._lock:
            return [outcome for when, outcome, _ in self.outcomes if when > moment]

    def until(self, moment: float) -> list[int | str]:
        with self._lock:
            return [outcome for when, outcome, _ in self.outcomes if when <= moment]

    def created(self) -> list[int]:
        with self._lock:
            return [created for _, _, created in self.outcomes if created is not None]


@pytest.mark.process
def test_kill_9_of_a_worker_under_load(database_url: str) -> None:
    server = start_gunicorn(server_env(database_url, RESET_DB="1"), workers=2)
    try:
        server.wait_healthy()
        workers = wait_for_workers(server, 2)
        headers = server_login(server.url, *ALICE)
        with _Load(server, headers) as load:
            time.sleep(1.5)
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            replacement = wait_for_workers(server, 2, without={victim}) - workers
            replaced = time.monotonic()
            time.sleep(1.5)
        assert len(replacement) == 1
        failures = [outcome for outcome in load.after(0) if outcome != 201]
        # Only what the dead worker had in hand may fail: at most one request per load thread.
        assert len(failures) <= 4, failures
        assert set(load.after(killed + 0.5)) == {201}, "requests failed after the kill"
        assert 201 in load.after(replaced), "no request succeeded after the replacement came up"
        created = load.created()
        listed = httpx.get(f"{server.url}/api/todos/?limit=1&count=true", headers=headers)
        assert int(listed.headers["X-Total-Count"]) >= len(created) + 2
    finally:
        server.stop()
    ids = ",".join(str(todo_id) for todo_id in created)
    stored = int(scalar(database_url, f"SELECT count(*) FROM todos WHERE id IN ({ids})"))  # noqa: S608 - ints
    assert stored == len(created), "a committed todo is gone"
    assert server.output().count("RESET_DB: done") == 1


@pytest.mark.process
def test_sigterm_under_load_finishes_accepted_requests(sqlite_url: str) -> None:
    graceful = 10
    # A real bcrypt cost: each login takes ~0.2 s of CPU, so most are still running at SIGTERM.
    # Eight logins of one account at once are eight attempts counted before their passwords
    # are checked (docs: Security, "Brute force"): a limit above eight lets them all through.
    env = server_env(
        sqlite_url, RESET_DB="1", BCRYPT_ROUNDS="11", GRACEFUL_TIMEOUT=str(graceful), LOGIN_MAX_FAILURES="20"
    )
    server = start_gunicorn(env, workers=2)
    clients: list[httpx.Client] = []
    try:
        server.wait_healthy()
        clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(8)]
        for client in clients:  # each connection accepted by a worker before the logins start
            assert client.get("/health").status_code == 200

        def login(client: httpx.Client) -> tuple[int, float]:
            response = client.post("/api/auth/token", data={"username": ALICE[0], "password": ALICE[1]})
            return response.status_code, time.monotonic()

        with _Load(server, server_login(server.url, *ALICE), threads=2) as load, ThreadPoolExecutor(8) as pool:
            time.sleep(0.5)
            logins = [pool.submit(login, client) for client in clients]
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            results = [future.result() for future in logins]
            server.process.wait(graceful + 5)
            exited = time.monotonic() - signalled
            time.sleep(0.3)
    finally:
        for client in clients:
            client.close()
        server.stop()
    assert [status for status, _ in results] == [200] * len(results)
    assert sum(done > signalled for _, done in results) >= len(results) // 2, "the logins ended before SIGTERM"
    # The other clients: served until the listening socket closes, then turned away at the door
    # (a refused or reset connection); never an error answer.
    assert set(load.until(signalled)) == {201}
    assert all(outcome == 201 or isinstance(outcome, str) for outcome in load.after(signalled)), load.after(signalled)
    assert exited < graceful, f"the master took {exited:.1f}s"
    assert server.process.returncode == 0
    assert "SIGKILL" not in server.output()


class _Proxy:
    """A loopback TCP proxy to PostgreSQL that the test controls: `cut` resets every
    connection and every new one; `blackhole` accepts new connections and never answers;
    `restore` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "open"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.append(client)
                mode = self.mode
            if mode == "cut":
                _reset(client)
            elif mode == "open":
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _reset(client)
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._open.append(upstream)
                threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    def _set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            sockets, self._open = self._open, []
        for sock in sockets:
            _reset(sock)

    def cut(self) -> None:
        self._set("cut")

    def blackhole(self) -> None:
        self._set("blackhole")

    def restore(self) -> None:
        self._set("open")

    def close(self) -> None:
        self._set("cut")
        self._listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _reset(sink)


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[_Proxy]:
    url = sa.make_url(postgres_url)
    proxy = _Proxy((url.host or "127.0.0.1", url.port or 5432))
    yield proxy
    proxy.close()


def _timed(method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.request(method, url, timeout=60, **kwargs)
    return response, time.monotonic() - started


@pytest.mark.process
def test_database_goes_away_and_comes_back(postgres_url: str, proxy: _Proxy) -> None:
    connect_timeout = 2
    via_proxy = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = start_gunicorn(server_env(via_proxy, RESET_DB="1", DB_CONNECT_TIMEOUT=str(connect_timeout)), workers=2)
    try:
        server.wait_healthy()
        workers = wait_for_workers(server, 2)
        headers = server_login(server.url, *ALICE)
        for _ in range(8):  # every worker's pool holds live connections
            assert httpx.get(f"{server.url}/api/todos/", headers=headers).status_code == 200

        proxy.cut()  # connections reset, new ones refused: PostgreSQL stopped, a proxy restarted
        for _ in range(6):  # fresh connections: both workers, their pools' dead connections first
            health, took = _timed("GET", f"{server.url}/health")
            assert health.status_code == 503
            assert health.json() == {
                "name": "asgi_todo",
                "version": __version__,
                "database": "unavailable",
            }
            assert took < 3, took
            for method, body in (("GET", None), ("POST", {"text": "while down"})):
                response, took = _timed(method, f"{server.url}/api/todos/", headers=headers, json=body)
                assert (response.status_code, response.json()) == (503, {"detail": "Database unavailable"})
                assert response.headers["content-type"] == "application/json"
                assert took < 3, took

        proxy.blackhole()  # the network drops everything: connecting waits for DB_CONNECT_TIMEOUT
        for _ in range(2):
            response, took = _timed("GET", f"{server.url}/api/todos/", headers=headers)
            assert (response.status_code, response.json()) == (503, {"detail": "Database unavailable"})
            assert took < connect_timeout + 3, took

        proxy.restore()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "no recovery within 10 s"
            time.sleep(0.2)
        for _ in range(6):
            assert httpx.get(f"{server.url}/health").json()["database"] == "ok"
            created = httpx.post(f"{server.url}/api/todos/", headers=headers, json={"text": "after the outage"})
            assert created.status_code == 201
        assert children(server.process.pid) == workers, "a worker died or was replaced"
    finally:
        server.stop()
    assert "WORKER TIMEOUT" not in server.output()


@pytest.mark.process
def test_worker_replaced_during_an_outage_starts_with_the_generated_key(postgres_url: str, proxy: _Proxy) -> None:
    """No SECRET_KEY: the key lives in the database. The master reads it once and hands it to
    its workers, so one that gunicorn starts while the database is down still boots, answers
    503, and accepts the tokens issued before once the database is back."""
    via_proxy = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = server_env(via_proxy, RESET_DB="1", DB_CONNECT_TIMEOUT="2")
    del env["SECRET_KEY"]
    server = start_gunicorn(env, workers=2)
    try:
        server.wait_healthy()
        workers = wait_for_workers(server, 2)
        headers = server_login(server.url, *ALICE)

        proxy.cut()
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        replaced = wait_for_workers(server, 2, without={killed})
        (new,) = replaced - workers
        deadline = time.monotonic() + 20
        while f"[{new}] uvicorn: Application startup complete" not in server.output():
            assert "Application startup failed" not in server.output(), server.output()[-3000:]
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.1)
        for _ in range(4):
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 503

        proxy.restore()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "no recovery within 10 s"
            time.sleep(0.2)
        for _ in range(8):  # a new connection each time: both workers
            with httpx.Client(base_url=server.url, timeout=30) as http:
                assert http.get("/api/auth/me", headers=headers).status_code == 200
        assert children(server.process.pid) == replaced, "a worker failed to boot"
    finally:
        server.stop()


@pytest.mark.process
def test_logs_json_to_files_with_sql_echo(sqlite_url: str, tmp_path: Path) -> None:
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    env = server_env(
        sqlite_url,
        RESET_DB="1",
        LOG_FORMAT="json",
        ACCESS_LOG=str(access),
        ERROR_LOG=str(errors),
        SQL_ECHO="1",
        FORWARDED_ALLOW_IPS="192.0.2.1",  # not loopback: X-Forwarded-For from here is ignored
    )
    server = start_gunicorn(env, workers=1)
    try:
        server.wait_healthy()
        response = httpx.get(
            f"{server.url}/health", headers={"X-Request-ID": "rid-123", "X-Forwarded-For": "203.0.113.9"}
        )
        assert response.headers["x-request-id"] == "rid-123"
        assert "server" not in response.headers
    finally:
        server.stop()
    error_entries = [json.loads(line) for line in errors.read_text().splitlines()]
    access_entries = [json.loads(line) for line in access.read_text().splitlines()]
    loggers = {entry["logger"] for entry in error_entries}
    assert {"gunicorn", "uvicorn", "asgi_todo.db", "sqlalchemy.engine.Engine"} <= loggers
    assert any(entry["message"].startswith("Booting worker") for entry in error_entries)
    assert any("SELECT 1" in entry["message"] and entry.get("request_id") == "rid-123" for entry in error_entries)
    assert not loggers & {"asgi_todo.access", "uvicorn.access"}
    (entry,) = [entry for entry in access_entries if entry.get("request_id") == "rid-123"]
    assert entry["logger"] == "asgi_todo.access"
    assert (entry["status"], entry["message"].split()[0]) == (200, "127.0.0.1")
    assert entry["duration_ms"] > 0
    assert {entry["logger"] for entry in access_entries} == {"asgi_todo.access"}
    assert server.output().strip() == ""  # everything went to the two files


@pytest.mark.process
def test_start_sh_prestart_and_reload(sqlite_url: str, tmp_path: Path) -> None:
    prestart = tmp_path / "prestart.sh"
    prestart.write_text(f"touch {tmp_path}/prestart-ran\nexport API_PREFIX=/v2\n")
    port = free_port()
    env = server_env(sqlite_url, RESET_DB="1", PRE_START_PATH=str(prestart), HOST="127.0.0.1", PORT=str(port))
    server = start_script(env, port=port, args=["--reload"])
    try:
        server.wait_healthy()
        assert httpx.get(f"{server.url}/v2/todos/").status_code == 401  # the prestart's export reached the app
    finally:
        server.stop()
    assert (tmp_path / "prestart-ran").exists()
    output = server.output()
    assert "Started reloader process" in output
    assert "Booting worker" not in output  # uvicorn alone, no gunicorn


def _clone_of_start_sh(tmp_path: Path, *, with_venv: bool) -> Path:
    """start.sh copied into a directory like a fresh clone, with the README's .venv (this
    interpreter's virtual environment) or without one."""
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(START_SH, clone / "start.sh")
    if with_venv:
        assert (Path(sys.prefix) / "bin" / "gunicorn").exists(), "the tests run in the virtual environment"
        (clone / ".venv").symlink_to(sys.prefix)
    assert shutil.which("gunicorn", path=os.defpath) is None, "gunicorn installed outside any virtual environment"
    return clone / "start.sh"


@pytest.mark.process
def test_start_sh_finds_the_virtual_environment_beside_it(sqlite_url: str, tmp_path: Path) -> None:
    script = _clone_of_start_sh(tmp_path, with_venv=True)
    port = free_port()
    env = {**server_env(sqlite_url, RESET_DB="1", WEB_CONCURRENCY="1", BIND=f"127.0.0.1:{port}"), "PATH": os.defpath}
    server = start([str(script)], env, port=port, cwd=str(tmp_path))
    try:
        server.wait_healthy()
    finally:
        server.stop()


@pytest.mark.process
def test_start_sh_without_gunicorn_says_what_to_do(tmp_path: Path) -> None:
    script = _clone_of_start_sh(tmp_path, with_venv=False)
    result = subprocess.run(
        [str(script)], env={"PATH": os.defpath}, capture_output=True, text=True, timeout=30, cwd=str(tmp_path)
    )
    assert result.returncode == 127
    assert result.stderr.splitlines() == [
        f"asgi-todo: gunicorn not found: install the package into {script.parent}/.venv (README, Run it),"
        " or activate the virtual environment it is in"
    ]


@pytest.mark.process
def test_wrk_mixed_load_all_2xx_and_flat_memory(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    require(shutil.which("wrk") is not None, "wrk (Debian package wrk)")
    env = server_env(postgres_url, RESET_DB="1", ACCESS_LOG="/dev/null", LOG_LEVEL="warning")
    server = start_gunicorn(env, workers=2)
    try:
        server.wait_healthy()
        workers = sorted(wait_for_workers(server, 2))
        headers = server_login(server.url, *ALICE)
        todo_id = httpx.get(f"{server.url}/api/todos/", headers=headers).json()[0]["id"]
        wrk_env = {**os.environ, "WRK_TOKEN": headers["Authorization"].split()[1], "WRK_TODO_ID": str(todo_id)}
        command = ["wrk", "-t2", "-c64", "-d30s", "--timeout", "5s", "-s", str(WRK_SCRIPT), server.url]
        before = [rss_kib(pid) for pid in workers]
        with subprocess.Popen(command, env=wrk_env, stdout=subprocess.PIPE, text=True) as wrk:
            time.sleep(5)  # warmed up: pools filled, caches made
            start = [rss_kib(pid) for pid in workers]
            output = wrk.communicate(timeout=60)[0]
        end = [rss_kib(pid) for pid in workers]
        assert sorted(children(server.process.pid)) == workers, "a worker was replaced during the run"
    finally:
        server.stop()
    result = json.loads(output.split("WRK_RESULT ", 1)[1])
    with capsys.disabled():
        print(f"\nwrk 30 s, 64 connections, 2 workers, mixed read/write on PostgreSQL: {json.dumps(result)}")
        for pid, first, warm, last in zip(workers, before, start, end, strict=True):
            mib = [f"{kib / 1024:.1f}" for kib in (first, warm, last)]
            print(f"worker {pid} RSS MiB: before load {mib[0]}, after 5 s {mib[1]}, at the end {mib[2]}")
    assert result["requests"] > 1000
    assert result["non2xx"] == 0, result["statuses"]
    assert result["connect"] + result["read"] + result["write"] + result["timeout"] == 0, result
    for warm, last in zip(start, end, strict=True):
        assert last - warm < max(warm // 10, 8 * 1024), f"RSS grew from {warm} KiB to {last} KiB"


def _metrics_answer(host: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}/metrics", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.process
@pytest.mark.parametrize(
    ("extra", "listens", "not_on"),
    [
        pytest.param({}, "127.0.0.1", "127.0.0.2", id="bind-host"),
        pytest.param({"METRICS_HOST": "127.0.0.2"}, "127.0.0.2", "127.0.0.1", id="metrics-host"),
        pytest.param({"BIND": "unix:{socket}"}, "127.0.0.1", "127.0.0.2", id="unix-socket-only"),
    ],
)
def test_the_metrics_port_listens_where_the_service_does(
    sqlite_url: str, tmp_path: Path, extra: dict[str, str], listens: str, not_on: str
) -> None:
    """BIND=127.0.0.1:PORT without HOST: the metrics port is on 127.0.0.1 too (it was on
    0.0.0.0); METRICS_HOST chooses; with unix sockets only, 127.0.0.1 (docs: Configuration, The two launchers)."""
    metrics_port = free_port()
    extra = {name: value.format(socket=tmp_path / "app.sock") for name, value in extra.items()}
    server = start_gunicorn(server_env(sqlite_url, RESET_DB="1", METRICS_PORT=str(metrics_port), **extra), workers=1)
    try:
        deadline = time.monotonic() + 30
        while not _metrics_answer(listens, metrics_port):
            assert server.process.poll() is None, server.output()[-3000:]
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.2)
        assert not _metrics_answer(not_on, metrics_port)
    finally:
        server.stop()
