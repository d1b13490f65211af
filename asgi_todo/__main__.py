"""The asgi-todo command: serve the API, manage the database, export the OpenAPI document.

Each command is a function of the settings and its arguments, registered once with its help
line in `parser()`; a new command or `db` action is one more `_command(...)` call there.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import NoReturn

from sqlalchemy.exc import OperationalError

from . import drain, logs, startup
from .settings import PROGRAM, ConfigError, Settings, load_settings, refuse

logger = logging.getLogger("asgi_todo.server")

_SUMMARY = "The todo API: serve it, manage its database, export its OpenAPI document."

Command = Callable[[Settings, argparse.Namespace], int]

# What the settings help shows where the default is not a plain value (README, "Configuration").
_DEFAULT_WORDS = {
    "secret_key": "generated, shared through the database",
    "db_threads": "1 (SQLite), 4 (PostgreSQL)",
    "cors_origins": "none",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        command: Command = args.command
        return command(load_settings(), args)
    except ConfigError as exc:
        refuse(exc, status=2)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        refuse(f"DATABASE_URL: cannot use the database: {reason}", status=2)


def parser() -> argparse.ArgumentParser:
    """The whole command line; every command and option says what it does and its default."""
    root = _Parser(prog=PROGRAM, description=_SUMMARY, formatter_class=_Help)
    commands = root.add_subparsers(title="commands", metavar="COMMAND", required=True)

    serve = _command(commands, "serve", _serve, "run the API with uvicorn, one process", epilog=_settings_help())
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to listen on (env HOST)")
    serve.add_argument("--port", type=_port, default=_env("PORT", "8000"), help="port to listen on (env PORT)")
    serve.add_argument(
        "--reload",
        action="store_true",
        default=_env("DEV", "0") == "1",
        help="restart on code changes, for development (env DEV=1)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=_env("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        help="proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (env FORWARDED_ALLOW_IPS)",
    )

    database = _command(commands, "db", None, "create, update or reset the database", epilog=_settings_help())
    actions = database.add_subparsers(title="actions", metavar="ACTION", required=True)
    reset = _command(actions, "reset", _db_reset, "drop every table, create them and load the demo users and todos")
    reset.add_argument("--yes", action="store_true", help="needed when the database holds rows: they are dropped")
    _command(actions, "update", _db_update, "create the tables that are missing; every row stays")

    openapi = _command(commands, "openapi", _openapi, "write the OpenAPI document (API_PREFIX from the environment)")
    openapi.add_argument("--output", default="openapi/openapi.json", help="a file, or - for standard output")
    return root


class _Parser(argparse.ArgumentParser):
    """A usage error is one line too, like every other refusal."""

    def error(self, message: str) -> NoReturn:
        refuse(f"{message} (see {self.prog} --help)", status=2)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help; the settings list as written."""


def _command(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    run: Command | None,
    summary: str,
    *,
    epilog: str | None = None,
) -> _Parser:
    command = commands.add_parser(name, help=summary, description=summary, epilog=epilog, formatter_class=_Help)
    if run is not None:
        command.set_defaults(command=run)
    return command


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a port number (1-65535)")
    return int(value)


def _settings_help() -> str:
    lines = ["settings, from the environment or ./.env (README, Configuration):"]
    for name, field in Settings.model_fields.items():
        default = _DEFAULT_WORDS.get(name, field.default)
        if isinstance(default, bool):
            default = int(default)
        lines.append(f"  {name.upper():<30} default: {default}")
    return "\n".join(lines)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import ChangeReload

    from .protocol import BoundedHeadProtocol

    logs.configure(level=settings.log_level, log_format=settings.log_format)
    config = uvicorn.Config(
        "asgi_todo.app:create_app",
        factory=True,
        reload=args.reload,
        log_config=None,
        access_log=False,
        server_header=False,
        http=BoundedHeadProtocol,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    # The port first: RESET_DB must not wipe a database that another server on it is serving.
    listeners = [_listen(args.host, args.port, backlog=config.backlog, name="PORT")]
    if settings.metrics and settings.metrics_port is not None:
        # The same server answers /metrics there, and only that (metrics.MetricsPortGuard).
        listeners.append(_listen(args.host, settings.metrics_port, backlog=config.backlog, name="METRICS_PORT"))
    action = startup.prepare_launch(settings, launcher="serve")  # the server (and every reload of it) skips it
    if settings.metrics:
        from . import metrics

        metrics.record_startup(action)
    logger.info("listening on http://%s:%d", args.host, args.port)
    if config.should_reload:  # development: the reloader's server, without the drain
        ChangeReload(config, target=uvicorn.Server(config).run, sockets=listeners).run()
        return 0
    server = drain.Server(config, drain_seconds=settings.drain_seconds)
    server.run(sockets=listeners)
    return 0 if server.started else 3  # uvicorn's own status for a failed start


def _listen(host: str, port: int, *, backlog: int, name: str) -> socket.socket:
    """The listening socket, or a ConfigError naming the problem (a port in use, a bad host)."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(backlog)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"{name}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener.set_inheritable(True)
    return listener


def _db_reset(settings: Settings, args: argparse.Namespace) -> int:
    held = startup.stored_rows(settings)
    if sum(held.values()) and not args.yes:
        rows = startup.describe_rows(held)
        raise ConfigError(f"DATABASE_URL: the database holds {rows}; `db reset --yes` drops them")
    return _db(settings, action="reset")


def _db_update(settings: Settings, args: argparse.Namespace) -> int:
    return _db(settings, action="update")


def _db(settings: Settings, *, action: str) -> int:
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    wanted = settings.model_copy(update={"reset_db": action == "reset", "update_db": action == "update"})
    startup.prepare(wanted, start=f"cli-{uuid.uuid4().hex}", force=True)
    print(f"{PROGRAM}: database {action} done", file=sys.stderr)
    return 0


def _openapi(settings: Settings, args: argparse.Namespace) -> int:
    from .openapi import document_json

    text = document_json(settings)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
        print(f"{PROGRAM}: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
