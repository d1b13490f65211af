"""The asgi-todo command line: its help, and one line for a usage error (README, "Run it")."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import sqlalchemy as sa

from asgi_todo.__main__ import main
from asgi_todo.settings import PROGRAM, Settings

from .servers import server_env

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


def test_serve_help_names_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "serve")
    options = _options(text)
    assert set(options) == set(SERVE_ENVIRONMENT)
    for option, variable in SERVE_ENVIRONMENT.items():
        assert f"(env {variable}" in options[option], options[option]
    for name in Settings.model_fields:
        assert re.search(rf"^  {name.upper()} +default: \S", text, re.M), f"{name.upper()} is not in serve --help"


def test_options_take_their_defaults_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("HOST", "::1")
    options = _options(_help(capsys, "serve"))
    assert "(default: 9123)" in options["--port"]
    assert "(default: ::1)" in options["--host"]


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
def test_db_reset_drops_rows_only_with_yes(database_url: str) -> None:
    assert _cli(database_url, "db", "update").returncode == 0
    assert _cli(database_url, "db", "reset").returncode == 0  # no rows yet: nothing to lose
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE users SET fname = 'Kept' WHERE email = 'alice@example.com'"))

    refused = _cli(database_url, "db", "reset")

    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"{PROGRAM}: DATABASE_URL: the database holds 6 rows (users: 2, todos: 4); `db reset --yes` drops them"
    ]
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT fname FROM users WHERE email = 'alice@example.com'")) == "Kept"

    done = _cli(database_url, "db", "reset", "--yes")

    assert done.returncode == 0, done.stderr
    assert "RESET_DB: dropping every table, with 6 rows (users: 2, todos: 4)" in done.stderr
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT fname FROM users WHERE email = 'alice@example.com'")) == "Alice"
    engine.dispose()
