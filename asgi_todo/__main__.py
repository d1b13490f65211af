"""The command line: serve, db reset|update, openapi."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence

from sqlalchemy.exc import OperationalError

from . import logs, startup
from .settings import ConfigError, Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asgi-todo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API with uvicorn, one process")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    database = commands.add_parser("db", help="reset (drop, create, demo data) or update (create what is missing)")
    database.add_argument("action", choices=["reset", "update"])
    openapi = commands.add_parser("openapi", help="write the OpenAPI document")
    openapi.add_argument("--output", default="openapi/openapi.json", help="a file, or - for standard output")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "serve":
            return _serve(settings, host=args.host, port=args.port, reload=args.reload)
        if args.command == "db":
            return _db(settings, action=args.action)
        return _openapi(settings, output=args.output)
    except ConfigError as exc:
        print(f"asgi-todo: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        print(f"asgi-todo: DATABASE_URL: cannot use the database: {reason}", file=sys.stderr)
        return 2


def _serve(settings: Settings, *, host: str, port: int, reload: bool) -> int:
    import uvicorn

    logs.configure(level=settings.log_level, log_format=settings.log_format)
    action = startup.prepare_launch(settings, launcher="serve")  # the server (and every reload of it) skips it
    if settings.metrics:
        from . import metrics

        metrics.record_startup(action)
    uvicorn.run(
        "asgi_todo.app:create_app",
        factory=True,
        host=host,
        port=port,
        reload=reload,
        log_config=None,
        access_log=False,
        server_header=False,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )
    return 0


def _db(settings: Settings, *, action: str) -> int:
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    wanted = settings.model_copy(update={"reset_db": action == "reset", "update_db": action == "update"})
    startup.prepare(wanted, start=f"cli-{uuid.uuid4().hex}", force=True)
    print(f"asgi-todo: database {action} done", file=sys.stderr)
    return 0


def _openapi(settings: Settings, *, output: str) -> int:
    from .openapi import document_json

    text = document_json(settings)
    if output == "-":
        sys.stdout.write(text)
    else:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
        print(f"asgi-todo: wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
