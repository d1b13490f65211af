"""The two launchers, `asgi-todo serve` and `./start.sh` (gunicorn), as an operator meets them
(README, "Run it"; docs: Configuration, Deployment): a port already taken, a database that
is down at start-up, and what a clean start and stop write to the log."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from asgi_todo.settings import PROGRAM

from .helpers import ALICE
from .servers import START_SH, Server, free_port, server_env, start, start_gunicorn

LAUNCHERS = ("serve", "gunicorn")
# What an operator reads as trouble in a log that should be clean.
_TROUBLE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|error|Error|Traceback|exception|Exception|failed|\[rid=-\]")


def _command(launcher: str, port: int) -> list[str]:
    if launcher == "serve":
        return [sys.executable, "-m", "asgi_todo", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return [str(START_SH)]


def _environment(launcher: str, env: Mapping[str, str], port: int) -> dict[str, str]:
    """start.sh gets one worker on the port and this interpreter's scripts on PATH."""
    if launcher == "serve":
        return dict(env)
    bin_dir = str(Path(sys.executable).parent)
    return {"WEB_CONCURRENCY": "1", **env, "BIND": f"127.0.0.1:{port}", "PATH": f"{bin_dir}:{env.get('PATH', '')}"}


def _refusal(launcher: str, env: Mapping[str, str], *, port: int) -> list[str]:
    """The lines a launcher writes when it must refuse to start; it must exit non-zero, quickly."""
    result = subprocess.run(
        _command(launcher, port),
        env=_environment(launcher, env, port),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.mkdtemp(prefix="asgi_todo-cwd-"),
    )
    assert result.returncode != 0, result.stderr
    # gunicorn says which version starts before it reads its configuration hooks.
    return [line for line in (result.stdout + result.stderr).splitlines() if "Starting gunicorn" not in line]


def _launch(launcher: str, env: Mapping[str, str]) -> Server:
    port = free_port()
    if launcher == "gunicorn":
        return start_gunicorn(env, workers=2, port=port)
    return start(_command(launcher, port), env, port=port)


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608 - our names
    finally:
        engine.dispose()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port that another server already listens on."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield other.getsockname()[1]


@pytest.mark.process
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_reset_on_a_taken_port_is_one_line_and_wipes_nothing(
    launcher: str, empty_database_url: str, taken_port: int
) -> None:
    """The operator's week-one accident: RESET_DB=1 next to a running server on the same port
    and database wiped that server's data, then failed to bind."""
    server = _launch(launcher, server_env(empty_database_url, UPDATE_DB="1"))  # no reset this minute
    try:
        server.wait_healthy()
        signup = {"email": "kept@example.com", "password": "a-long-password", "fname": "K", "lname": "Ept"}
        assert httpx.post(f"{server.url}/api/users/signup", json=signup).status_code == 201
    finally:
        server.stop()

    lines = _refusal(launcher, server_env(empty_database_url, RESET_DB="1"), port=taken_port)

    assert _count(empty_database_url, "users") == 1  # the one signed up, no demo users: nothing reset
    assert len(lines) == 1, lines
    variable = "PORT" if launcher == "serve" else "BIND"
    assert lines[0] == f"{PROGRAM}: {variable}: cannot listen on 127.0.0.1:{taken_port}: Address already in use"


@pytest.mark.process
@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("secret_key", ["set", "generated"])
def test_database_down_at_start_is_one_line(launcher: str, secret_key: str) -> None:
    """No server answers on the database's port. The service does not start: one line that
    names the cause, whether or not the key would have been read from the database."""
    env = server_env(f"postgresql://postgres@127.0.0.1:{free_port()}/asgi_todo", DB_CONNECT_TIMEOUT="2")
    if secret_key == "generated":
        del env["SECRET_KEY"]

    lines = _refusal(launcher, env, port=free_port())

    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{PROGRAM}: DATABASE_URL: cannot use the database: "), lines
    assert "refused" in lines[0], lines


@pytest.mark.process
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_clean_start_and_stop_log_nothing_that_looks_like_an_error(launcher: str, sqlite_url: str) -> None:
    server = _launch(launcher, server_env(sqlite_url, RESET_DB="1"))
    try:
        server.wait_healthy()
        assert httpx.post(
            f"{server.url}/api/auth/token",
            data={"username": ALICE[0], "password": ALICE[1]},
            headers={"X-Request-ID": "the-login"},
        ).is_success
    finally:
        status = server.stop(signal.SIGTERM)
    lines = server.output().splitlines()

    assert status in (0, -signal.SIGTERM), lines  # uvicorn alone ends by its own signal
    assert lines, "nothing logged"
    assert [line for line in lines if _TROUBLE.search(line)] == []
    loggers = {found.group(1) for line in lines if (found := re.search(r" \[\d+\] ([\w.]+): ", line))}
    assert loggers & {"gunicorn.error", "uvicorn.error"} == set(), loggers
    assert "uvicorn" in loggers
    assert ("gunicorn" in loggers) == (launcher == "gunicorn")
    (login,) = [line for line in lines if "/api/auth/token" in line]
    assert login.endswith(" [rid=the-login]")
    assert all(" asgi_todo.access: " in line for line in lines if "[rid=" in line)  # a request id within requests only


def _run(launcher: str, env: Mapping[str, str], *, port: int, cwd: Path | None = None) -> tuple[int, list[str]]:
    """A launcher that must refuse to start: its exit status and lines."""
    result = subprocess.run(
        _command(launcher, port),
        env=_environment(launcher, env, port),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(cwd or tempfile.mkdtemp(prefix="asgi_todo-cwd-")),
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "Starting gunicorn" not in line]
    return result.returncode, lines


@pytest.mark.process
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_busy_metrics_port_is_named(launcher: str, sqlite_url: str, taken_port: int) -> None:
    status, lines = _run(launcher, server_env(sqlite_url, RESET_DB="1", METRICS_PORT=str(taken_port)), port=free_port())

    assert (status, lines) == (
        2,
        [f"{PROGRAM}: METRICS_PORT: cannot listen on 127.0.0.1:{taken_port}: Address already in use"],
    )


@pytest.mark.process
@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize(
    ("path", "update", "message"),
    [
        pytest.param(
            "no-such-dir/todo.db", "1", "cannot create the SQLite file {path}: no directory {parent}", id="no-dir"
        ),
        pytest.param(
            "tood.db",
            "0",
            "there is no SQLite file {path}; UPDATE_DB=1 or `asgi-todo db upgrade` creates it",
            id="typo",
        ),
        pytest.param(".", "0", "the SQLite path {path} is a directory", id="a-directory"),
    ],
)
def test_an_unusable_sqlite_path_is_named_and_left_alone(
    launcher: str, tmp_path: Path, path: str, update: str, message: str
) -> None:
    """The refusal names the file; a mistyped path is not created (SQLite would leave an empty
    database there)."""
    target = (tmp_path / path).absolute()
    before = sorted(tmp_path.rglob("*"))
    env = server_env(f"sqlite:///{tmp_path}/{path}", UPDATE_DB=update)

    status, lines = _run(launcher, env, port=free_port(), cwd=tmp_path)

    expected = message.format(path=target if path != "." else tmp_path, parent=target.parent)
    assert (status, lines) == (2, [f"{PROGRAM}: DATABASE_URL: {expected}"])
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.process
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_mistyped_setting_is_named_once_and_an_empty_one_is_unset(
    launcher: str, sqlite_url: str, tmp_path: Path
) -> None:
    """LOG_LEVLE in .env and WORKERS in the environment are ignored, each with one warning that
    names the setting meant; WEB_CONCURRENCY= (empty) is unset, as every empty setting."""
    (tmp_path / ".env").write_text("LOG_LEVLE=debug\n")
    port = free_port()
    env = _environment(launcher, server_env(sqlite_url, RESET_DB="1", WORKERS="4", WEB_CONCURRENCY=""), port)
    server = start(_command(launcher, port), env, port=port, cwd=str(tmp_path))
    try:
        server.wait_healthy()
    finally:
        server.stop()
    warnings = [line for line in server.output().splitlines() if "warning:" in line]
    assert warnings == [
        f"{PROGRAM}: warning: LOG_LEVLE in .env is not a setting of {PROGRAM}, ignored; did you mean LOG_LEVEL?",
        f"{PROGRAM}: warning: WORKERS in the environment is not a setting of {PROGRAM}, ignored;"
        " did you mean WEB_CONCURRENCY?",
    ]


@pytest.mark.process
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_bad_worker_count_is_one_line(launcher: str, sqlite_url: str) -> None:
    status, lines = _run(launcher, server_env(sqlite_url, RESET_DB="1", WEB_CONCURRENCY="two"), port=free_port())

    assert status == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{PROGRAM}: WEB_CONCURRENCY: "), lines
