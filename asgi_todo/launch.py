"""What both launchers (`asgi-todo` and the gunicorn master) check before anything starts:
settings that look mistyped, and a SQLite file that is not where DATABASE_URL says.

They refuse with one line and the same exit status (CONFIG_ERROR), and warn with one line
per mistyped name (docs: Configuration, Names that are not settings).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from dotenv import dotenv_values
from pydantic import AliasChoices
from sqlalchemy.engine import make_url

from .settings import MULTIPROC_ENV, PROGRAM, ConfigError, ServerSettings, Settings

CONFIG_ERROR = 2  # a setting, the command line or the database's place is wrong

# Variables that are ours but no field: start.sh's prestart script, compose.yaml's database and
# port, gunicorn's own command line, and what the launchers hand their workers.
OTHER_VARIABLES = frozenset(
    {
        "PRE_START_PATH",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        # compose.yaml's own (its database role and network), read from the same .env
        "APP_DB_USER",
        "APP_DB_PASSWORD",
        "APP_SUBNET",
        "APP_GATEWAY",
        "APP_PORT",
        "GUNICORN_CMD_ARGS",
        "ASGI_TODO_START_ID",
        MULTIPROC_ENV,
    }
)
# Other programs' own variables: OpenTelemetry's SDK (TRACING=1), docker compose's (in .env).
_FOREIGN_PREFIXES = ("OTEL_", "COMPOSE_")
# Names other servers give one of our settings, which resemble it too little for difflib.
_OTHER_SERVERS_NAMES = {"WORKERS": "WEB_CONCURRENCY"}
# A name is taken for a mistyped one of ours when difflib finds it this close to one of ours:
# in .env, which is written for this service (and compose), a looser match; the environment
# holds every other program's variables too, so there only a typo away (LOG_LEVLE, DATABSE_URL).
_DOTENV_CUTOFF = 0.6
_ENVIRONMENT_CUTOFF = 0.8


def known_names() -> frozenset[str]:
    """Every variable some part of the service reads."""
    names = set(OTHER_VARIABLES)
    for model in (Settings, ServerSettings):
        for name, field in model.model_fields.items():
            names.add(name.upper())
            if isinstance(field.validation_alias, AliasChoices):
                names.update(str(alias).upper() for alias in field.validation_alias.choices)
    return frozenset(names)


def unknown_settings(environ: Mapping[str, str], dotenv: Mapping[str, str | None]) -> Iterator[str]:
    """One line for each name, in .env or the environment, that is not ours but looks like one of
    ours, naming the one it most resembles; any other name is some other program's business."""
    known = known_names()
    seen: set[str] = set()
    for source, names, cutoff in (
        (".env", dotenv, _DOTENV_CUTOFF),
        ("the environment", environ, _ENVIRONMENT_CUTOFF),
    ):
        for name in names:
            upper = name.upper()
            if upper in known or upper in seen or upper.startswith(_FOREIGN_PREFIXES):
                continue
            match = _OTHER_SERVERS_NAMES.get(upper) or next(
                iter(difflib.get_close_matches(upper, known, n=1, cutoff=cutoff)), None
            )
            if match is not None:
                seen.add(upper)
                yield f"{name} in {source} is not a setting of {PROGRAM}, ignored; did you mean {match}?"


def warn_unknown_settings(dotenv_path: str = ".env") -> None:
    """Once per launch, on standard error (the logs are not set up yet)."""
    dotenv = dotenv_values(dotenv_path) if os.path.isfile(dotenv_path) else {}
    for line in unknown_settings(os.environ, dotenv):
        print(f"{PROGRAM}: warning: {line}", file=sys.stderr, flush=True)


def check_database_file(settings: Settings, *, creates: bool) -> None:
    """A SQLite database must be a file that exists, unless this launch creates it (RESET_DB,
    UPDATE_DB, `db upgrade`): SQLite would otherwise create an empty one at a mistyped path,
    and the start would fail later without naming the path."""
    if not settings.is_sqlite:
        return
    path = Path(str(make_url(settings.database_url).database)).absolute()
    if path.is_dir():
        raise ConfigError(f"DATABASE_URL: the SQLite path {path} is a directory")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"DATABASE_URL: cannot read and write the SQLite file {path}")
        return
    if not path.parent.is_dir():
        raise ConfigError(f"DATABASE_URL: cannot create the SQLite file {path}: no directory {path.parent}")
    if not creates:
        raise ConfigError(
            f"DATABASE_URL: there is no SQLite file {path}; UPDATE_DB=1 or `{PROGRAM} db upgrade` creates it"
        )
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"DATABASE_URL: cannot create the SQLite file {path}: {path.parent} is not writable")
