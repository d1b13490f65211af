"""The asgi-todo command: serve the API, migrate or reset the database, name superusers, export
the OpenAPI document.

Each command is a function of the settings and its arguments, registered once with its help
line in `parser()`; a new command or `db` action is one more `_command(...)` call there.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NoReturn

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from . import db, drain, launch, logs, migrate, startup
from .reads import settings_read
from .settings import (
    LAUNCHER_HOSTS,
    PROGRAM,
    ConfigError,
    ServerSettings,
    Settings,
    host_port,
    load_server_settings,
    load_settings,
    refuse,
    written_default,
)

logger = logging.getLogger("asgi_todo.server")

_SUMMARY = "The todo API: serve it, migrate its database, name its superusers, export its OpenAPI document."

Command = Callable[[Settings, argparse.Namespace], int]
_OPENAPI_FILE = "openapi/openapi.json"  # the committed document, from the repository's root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    launch.warn_unknown_settings()
    try:
        command: Command = args.command
        return command(load_settings(), args)
    except ConfigError as exc:
        refuse(exc, status=launch.CONFIG_ERROR)
    except migrate.MigrationError as exc:
        refuse(exc, status=1)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        refuse(f"DATABASE_URL: cannot use the database: {reason}", status=launch.CONFIG_ERROR)


def parser() -> argparse.ArgumentParser:
    """The whole command line; every command and option says what it does and its default."""
    root = _Parser(prog=PROGRAM, description=_SUMMARY, formatter_class=_Help)
    commands = root.add_subparsers(title="commands", metavar="COMMAND", required=True)

    serve = _command(commands, "serve", _serve, "run the API with uvicorn, one process")
    for option, name, kind, summary in (
        ("--host", "host", str, "address to listen on"),
        ("--port", "port", _port, "port to listen on"),
        ("--forwarded-allow-ips", "forwarded_allow_ips", str, "proxies whose X-Forwarded-* headers are believed"),
    ):
        default = LAUNCHER_HOSTS["serve"] if name == "host" else written_default(name, ServerSettings)
        serve.add_argument(
            option,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{summary} (default: {default}; env {name.upper()})",
        )
    serve.add_argument(
        "--reload",
        action="store_true",
        default=argparse.SUPPRESS,
        help="restart on code changes, for development (default: off; env DEV=1; faster with asgi_todo[dev])",
    )

    database = _command(commands, "db", None, "migrate, check or reset the database")
    actions = database.add_subparsers(title="actions", metavar="ACTION", required=True)
    upgrade = _command(actions, "upgrade", _db_upgrade, "upgrade to a revision; every row stays")
    upgrade.add_argument("revision", nargs="?", default="head", help="the revision (head: the code's)")
    downgrade = _command(actions, "downgrade", _db_downgrade, "downgrade to a revision (base: no tables)")
    downgrade.add_argument("revision", help="the revision, e.g. 0001, or base")
    downgrade.add_argument(
        "--yes", action="store_true", help="needed when a step drops a table or column holding rows: they are lost"
    )
    _command(actions, "current", _db_current, "the database's revision, against the code's")
    _command(actions, "history", _db_history, "every revision, newest first")
    _command(actions, "check", _db_check, "exit 1, with one line, when the database is not at the code's revision")
    reset = _command(actions, "reset", _db_reset, "drop every table, create them and load the demo users and todos")
    reset.add_argument("--yes", action="store_true", help="needed when the database holds rows: they are dropped")
    _command(actions, "update", _db_update, "the same as `upgrade head`")
    backup = _command(actions, "backup", _db_backup, "write a consistent copy while the service runs (docs/backups.md)")
    backup.add_argument("path", help="the file to write (SQLite: a database file; PostgreSQL: pg_dump's custom format)")
    restore = _command(
        actions, "restore", _db_restore, "replace the database with a backup of the same or an older revision"
    )
    restore.add_argument("path", help="a file `db backup` wrote")
    restore.add_argument("--yes", action="store_true", help="needed when the database holds rows: they are replaced")
    revision = _command(actions, "revision", _db_revision, "write the next revision file (development)")
    revision.add_argument("-m", "--message", required=True, help="what the revision does")
    revision.add_argument(
        "--autogenerate", action="store_true", help="from the models' differences with a database at head"
    )

    users = _command(commands, "users", None, "name or unname superusers (the original stores no roles)")
    user_actions = users.add_subparsers(title="actions", metavar="ACTION", required=True)
    for action, summary in (("promote", "make the user a superuser"), ("demote", "make the user no superuser")):
        _command(user_actions, action, _users, summary).add_argument("email", help="the user's email")

    openapi = _command(commands, "openapi", _openapi, "write the OpenAPI document (API_PREFIX from the environment)")
    openapi.add_argument("--output", default=_OPENAPI_FILE, help="a file, or - for standard output")
    return root


class _Parser(argparse.ArgumentParser):
    """A usage error is one line too, like every other refusal. A command's help ends with the
    settings that command reads, found in the code when the help is asked for."""

    def error(self, message: str) -> NoReturn:
        refuse(f"{message} (see {self.prog} --help)", status=launch.CONFIG_ERROR)

    def format_help(self) -> str:
        run = self.get_default("command")
        if run is not None:
            self.epilog = _settings_help(run)
        elif self._subparsers is not None:
            self.epilog = "each command's --help lists the settings it reads"
        return super().format_help()


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help; the settings list as written."""


def _command(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    run: Command | None,
    summary: str,
) -> _Parser:
    command = commands.add_parser(name, help=summary, description=summary, formatter_class=_Help)
    if run is not None:
        command.set_defaults(command=run, command_name=name)
    return command


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a port number (1-65535)")
    return int(value)


def _settings_help(run: Command) -> str:
    """The settings `run` reads, with their defaults as they would be written in .env."""
    reads = settings_read(run)
    lines = ["settings it reads, from the environment or ./.env (docs: configuration):"]
    for model in (Settings, ServerSettings):
        for name in model.model_fields:
            if name in reads:
                lines.append(f"  {name.upper():<30} default: {written_default(name, model)}")
    return "\n".join(lines)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import ChangeReload

    from .protocol import BoundedHeadProtocol

    given = {name: getattr(args, name) for name in ("host", "port", "forwarded_allow_ips") if name in args}
    server_settings = load_server_settings(overrides={**given, **({"dev": True} if "reload" in args else {})})
    host = server_settings.listen_host("serve")
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    config = uvicorn.Config(
        "asgi_todo.app:create_app",
        factory=True,
        workers=1,  # one process; uvicorn would otherwise read WEB_CONCURRENCY (gunicorn's) itself
        reload=server_settings.dev,
        log_config=None,
        access_log=False,
        server_header=False,
        http=BoundedHeadProtocol,
        forwarded_allow_ips=list(server_settings.forwarded_allow_ips),
    )
    # The port first: RESET_DB must not wipe a database that another server on it is serving.
    listeners = [_listen(host, server_settings.port, backlog=config.backlog, name="PORT")]
    if settings.metrics and settings.metrics_port is not None:
        # The same server answers /metrics there, and only that (metrics.MetricsPortGuard).
        metrics_host = server_settings.metrics_host_for([host_port(host, server_settings.port)])
        listeners.append(_listen(metrics_host, settings.metrics_port, backlog=config.backlog, name="METRICS_PORT"))
    launch.check_database_file(settings, creates=settings.reset_db or settings.update_db)
    action = startup.prepare_launch(settings, launcher="serve")  # the server (and every reload of it) skips it
    if settings.metrics:
        from . import metrics

        metrics.record_startup(action)
    logger.info("listening on http://%s:%d", host, server_settings.port)
    if config.should_reload:  # development: the reloader's server, without the drain
        if importlib.util.find_spec("watchfiles") is None:
            logger.info("--reload: polling for changes; pip install 'asgi_todo[dev]' for watchfiles' watcher")
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
        raise ConfigError(f"{name}: cannot listen on {host_port(host, port)}: {exc.strerror or exc}") from None
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
    launch.check_database_file(settings, creates=True)
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    wanted = settings.model_copy(update={"reset_db": action == "reset", "update_db": action == "update"})
    startup.prepare(wanted, start=f"cli-{uuid.uuid4().hex}", force=True)
    print(f"{PROGRAM}: database {action} done", file=sys.stderr)
    return 0


def _db_backup(settings: Settings, args: argparse.Namespace) -> int:
    from .backup import BackupError, backup

    try:
        revision = backup(settings, Path(args.path))
    except BackupError as exc:
        refuse(exc, status=1)
    print(f"{PROGRAM}: wrote a backup at revision {revision} to {args.path}", file=sys.stderr)
    return 0


def _db_restore(settings: Settings, args: argparse.Namespace) -> int:
    from .backup import BackupError, restore

    try:
        revision, replaced = restore(settings, Path(args.path), replace=args.yes)
    except BackupError as exc:
        refuse(exc, status=1)
    then = "" if revision == migrate.head() else f"; run `{PROGRAM} db upgrade` to bring it to {migrate.head()}"
    print(f"{PROGRAM}: restored {args.path} (revision {revision}) in place of {replaced}{then}", file=sys.stderr)
    return 0


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    return _migration(settings, migrate.upgrade, args.revision)


def _db_downgrade(settings: Settings, args: argparse.Namespace) -> int:
    return _migration(settings, partial(migrate.downgrade, drop_rows=args.yes), args.revision)


def _migration(settings: Settings, run: Callable[[Connection, Settings, str], None], revision: str) -> int:
    """Under the start-up locks, as UPDATE_DB runs, so that it never races a starting server."""
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    with _connection(settings, creates=True) as connection, startup.startup_lock(settings, connection):
        run(connection, settings, revision)
        connection.commit()  # PostgreSQL: the revisions ran in the lock's transaction
        where = migrate.status(connection).current or "base"
    print(f"{PROGRAM}: database at revision {where}", file=sys.stderr)
    return 0


def _db_current(settings: Settings, args: argparse.Namespace) -> int:
    status = _status(settings)
    print(f"{status.current or 'base'} ({status.verdict}; the code's revision is {status.head})")
    return 0


def _db_check(settings: Settings, args: argparse.Namespace) -> int:
    problem = _status(settings).problem()
    if problem is not None:
        refuse(problem, status=1)
    print(f"{PROGRAM}: the database is at the code revision {migrate.head()}", file=sys.stderr)
    return 0


def _db_history(settings: Settings, args: argparse.Namespace) -> int:
    for script in migrate.scripts().walk_revisions():
        print(f"{script.revision}: {script.doc}{' (head)' if script.is_head else ''}")
    return 0


def _db_revision(settings: Settings, args: argparse.Namespace) -> int:
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    with _connection(settings, creates=True) as connection, startup.startup_lock(settings, connection):
        path = migrate.revision(connection, settings, message=args.message, autogenerate=args.autogenerate)
    print(f"{PROGRAM}: wrote {path}", file=sys.stderr)
    return 0


def _status(settings: Settings) -> migrate.Status:
    with _connection(settings) as connection:
        return migrate.status(connection)


@contextmanager
def _connection(settings: Settings, *, creates: bool = False) -> Iterator[Connection]:
    """Only the commands that build a database may create its SQLite file."""
    launch.check_database_file(settings, creates=creates)
    engine = db.make_engine(settings, pool_size=1)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _users(settings: Settings, args: argparse.Namespace) -> int:
    """The original stores no roles: an operator names the superusers."""
    from sqlalchemy.orm import Session

    from .accounts import set_superuser

    problem = _status(settings).problem()
    if problem is not None:
        raise migrate.MigrationError(problem)
    promote = args.command_name == "promote"
    with _connection(settings) as connection, Session(connection) as session:
        changed = set_superuser(session, email=args.email, superuser=promote)
        session.commit()
    if not changed:
        refuse(f"no user with the email {args.email!r}", status=1)
    print(f"{PROGRAM}: {args.email} is {'now' if promote else 'no longer'} a superuser", file=sys.stderr)
    return 0


def _openapi(settings: Settings, args: argparse.Namespace) -> int:
    from .openapi import document_json

    text = document_json(settings)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        hint = " (run it in the repository's root, or give --output FILE or -)" if args.output == _OPENAPI_FILE else ""
        raise ConfigError(f"--output: cannot write {args.output}: {exc.strerror or exc}{hint}") from None
    print(f"{PROGRAM}: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
