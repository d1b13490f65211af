"""The asgi-todo command line: its help, with the settings each command reads, and one line for
a usage error or a file it cannot write (README, "Run it")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from asgi_todo.__main__ import main
from asgi_todo.settings import PROGRAM, ServerSettings, Settings

from .servers import free_port, server_env, start

# The options whose default comes from the environment, and that variable.
SERVE_ENVIRONMENT = {
    "--host": "HOST",
    "--port": "PORT",
    "--reload": "DEV",
    "--forwarded-allow-ips": "FORWARDED_ALLOW_IPS",
}


def _help(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    text: str = capsys.readouterr().out
    return text


def _section(text: str, *headings: str) -> list[str]:
    found = re.search(rf"^(?:{'|'.join(headings)}):\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    return found.group(1).splitlines() if found else []


def _subcommands(text: str) -> dict[str, str]:
    """The subcommands a help text lists, with their line."""
    listed: dict[str, str] = {}
    for line in _section(text, "commands", "actions"):
        found = re.fullmatch(r" {4}(\S+)\s+(.*)", line)
        if found:
            listed[found.group(1)] = found.group(2)
    return listed


def _options(text: str) -> dict[str, str]:
    """Each --option of a help text and its description, wrapped lines joined."""
    options: dict[str, str] = {}
    for line in _section(text, "options"):
        found = re.match(r"  (--[\w-]+)(?: [A-Z_]+)?\s*(.*)", line)
        if found:
            option = found.group(1)
            options[option] = found.group(2)
        elif options and not line.startswith("  -h"):
            options[option] += " " + line.strip()
    return options


def _walk(capsys: pytest.CaptureFixture[str], *words: str) -> list[tuple[tuple[str, ...], str]]:
    """Every command's help, from the top down: (words, help text)."""
    text = _help(capsys, *words)
    found = [(words, text)]
    for name in _subcommands(text):
        found += _walk(capsys, *words, name)
    return found


def test_every_command_has_a_line_and_every_option_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    helps = _walk(capsys)
    commands = {words for words, _ in helps}
    assert {(), ("serve",), ("db",), ("db", "reset"), ("db", "update"), ("openapi",)} <= commands
    for words, text in helps:
        for name, line in _subcommands(text).items():
            assert len(line) > 10, f"{' '.join(words)} {name}: no help line"
        for option, line in _options(text).items():
            assert "(default: " in line, f"{' '.join(words)} {option}: no default shown: {line!r}"


def _settings_listed(text: str) -> dict[str, str]:
    """The settings a command's help lists, with the default as shown."""
    listed: dict[str, str] = {}
    for line in _section(text, re.escape("settings it reads, from the environment or ./.env (docs: configuration)")):
        name, _, default = line.strip().partition(" ")
        listed[name] = default.strip()
    return listed


# The settings that only gunicorn reads (METRICS_DIR: its workers' metric files).
GUNICORN_ONLY = {
    "BIND",
    "WEB_CONCURRENCY",
    "WORKERS_PER_CORE",
    "MAX_WORKERS",
    "TIMEOUT",
    "GRACEFUL_TIMEOUT",
    "METRICS_DIR",
}


def test_serve_help_names_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "serve")
    options = _options(text)
    assert set(options) == set(SERVE_ENVIRONMENT)
    for option, variable in SERVE_ENVIRONMENT.items():
        assert f"env {variable}" in options[option], options[option]
    listed = _settings_listed(text)
    # serve runs the app, which reads every app setting, and listens as the server settings say
    assert {name.upper() for name in Settings.model_fields} - GUNICORN_ONLY <= set(listed)
    assert {"HOST", "PORT", "FORWARDED_ALLOW_IPS", "METRICS_HOST", "DEV"} <= set(listed)
    assert not GUNICORN_ONLY & set(listed)


@pytest.mark.parametrize(
    ("words", "present", "absent"),
    [
        pytest.param(
            ("db", "current"), {"DATABASE_URL", "DB_CONNECT_TIMEOUT"}, {"API_PREFIX", "BCRYPT_ROUNDS"}, id="db-current"
        ),
        pytest.param(("db", "reset"), {"DATABASE_URL", "BCRYPT_ROUNDS"}, {"API_PREFIX", "CORS_ORIGINS"}, id="db-reset"),
        pytest.param(("db", "upgrade"), {"DATABASE_URL", "MIGRATION_LOCK_TIMEOUT"}, {"SECRET_KEY"}, id="db-upgrade"),
        pytest.param(("openapi",), {"API_PREFIX"}, {"BCRYPT_ROUNDS", "HOST", "CORS_ORIGINS"}, id="openapi"),
        pytest.param(("users", "promote"), {"DATABASE_URL"}, {"API_PREFIX", "METRICS"}, id="users-promote"),
    ],
)
def test_each_command_lists_the_settings_it_reads(
    capsys: pytest.CaptureFixture[str], words: tuple[str, ...], present: set[str], absent: set[str]
) -> None:
    listed = _settings_listed(_help(capsys, *words))
    assert present <= set(listed), listed
    assert not absent & set(listed), listed
    assert not GUNICORN_ONLY & set(listed)


@pytest.mark.parametrize("words", [pytest.param((), id="root"), pytest.param(("db",), id="db")])
def test_a_group_points_to_its_commands_help(capsys: pytest.CaptureFixture[str], words: tuple[str, ...]) -> None:
    text = _help(capsys, *words)
    assert _settings_listed(text) == {}
    assert "each command's --help lists the settings it reads" in text


def test_defaults_are_written_as_a_user_writes_them(capsys: pytest.CaptureFixture[str]) -> None:
    listed = _settings_listed(_help(capsys, "serve"))
    assert listed["METRICS_ALLOW_IPS"] == "default: 127.0.0.1,::1"
    assert listed["FORWARDED_ALLOW_IPS"] == "default: 127.0.0.1,::1"
    assert listed["RESET_DB"] == "default: 0"
    assert listed["METRICS"] == "default: 1"
    assert listed["METRICS_PORT"] == "default: none"
    assert listed["HEADER_TIMEOUT"] == "default: 10"
    for name, default in listed.items():
        assert "None" not in default, (name, default)
        assert "'" not in default, (name, default)  # no Python repr of a tuple


@pytest.mark.process
def test_serve_listens_where_the_environment_says(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(sqlite_url, RESET_DB="1", HOST="127.0.0.1", PORT=str(port))
    server = start([sys.executable, "-m", "asgi_todo", "serve"], env, port=port, cwd=str(tmp_path))
    try:
        server.wait_healthy()
    finally:
        server.stop()
    assert f"listening on http://127.0.0.1:{port}" in server.output()


def test_server_settings_have_descriptions() -> None:
    for name, field in ServerSettings.model_fields.items():
        assert field.description, name


@pytest.mark.process
@pytest.mark.parametrize(
    "output",
    [
        pytest.param("openapi/openapi.json", id="outside-the-checkout"),
        pytest.param("no/dir/x.json", id="missing-folder"),
    ],
)
def test_openapi_to_a_missing_folder_is_one_line(tmp_path: Path, output: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asgi_todo", "openapi", "--output", output],
        env=server_env(f"sqlite:///{tmp_path}/x.db"),
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{PROGRAM}: --output: cannot write {output}: No such file or directory"), lines
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param([], "the following arguments are required: COMMAND", id="no-command"),
        pytest.param(["db"], "the following arguments are required: ACTION", id="no-action"),
        pytest.param(["db", "drop"], "argument ACTION: invalid choice: 'drop'", id="unknown-action"),
        pytest.param(["serve", "--port", "http"], "argument --port: 'http' is not a port number", id="bad-port"),
    ],
)
def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{PROGRAM}: {message}"), lines
    assert lines[0].endswith("--help)")


def _cli(database_url: str, *words: str) -> subprocess.CompletedProcess[str]:
    env = server_env(database_url)
    return subprocess.run([sys.executable, "-m", "asgi_todo", *words], env=env, capture_output=True, text=True)


@pytest.mark.process
def test_db_reset_drops_rows_only_with_yes(empty_database_url: str) -> None:
    assert _cli(empty_database_url, "db", "update").returncode == 0
    assert _cli(empty_database_url, "db", "reset").returncode == 0  # no rows yet: nothing to lose
    engine = sa.create_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE users SET fname = 'Kept' WHERE email = 'alice@example.com'"))

    refused = _cli(empty_database_url, "db", "reset")

    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"{PROGRAM}: DATABASE_URL: the database holds 6 rows (users: 2, todos: 4); `db reset --yes` drops them"
    ]
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT fname FROM users WHERE email = 'alice@example.com'")) == "Kept"

    done = _cli(empty_database_url, "db", "reset", "--yes")

    assert done.returncode == 0, done.stderr
    assert "RESET_DB: dropping every table, with 6 rows (users: 2, todos: 4)" in done.stderr
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT fname FROM users WHERE email = 'alice@example.com'")) == "Alice"
    engine.dispose()


@pytest.mark.process
def test_serve_reload_without_watchfiles_polls_and_says_what_to_install(sqlite_url: str, tmp_path: Path) -> None:
    """watchfiles is in the dev extra only: without it --reload still works, by polling."""
    port = free_port()
    without = "import sys; sys.modules['watchfiles'] = None; from asgi_todo.__main__ import main; sys.exit(main())"
    command = [sys.executable, "-c", without, "serve", "--reload", "--host", "127.0.0.1", "--port", str(port)]
    server = start(command, server_env(sqlite_url, RESET_DB="1"), port=port, cwd=str(tmp_path))
    try:
        server.wait_healthy()
    finally:
        server.stop()
    output = server.output()
    assert "--reload: polling for changes; pip install 'asgi_todo[dev]' for watchfiles' watcher" in output
    assert "StatReload" in output, output[-2000:]
