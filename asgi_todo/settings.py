"""One frozen settings object, read from the environment (and an optional `.env`) once."""

from __future__ import annotations

import importlib.util
import ipaddress
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NoReturn

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .limits import KEY_MIN_BYTES

_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}

_ENV_NAMES = {"database_url": "DATABASE_URL"}
# What tracing.py imports: the packages of the `otel` extra.
_OTEL_MODULES = ("opentelemetry", "opentelemetry.sdk", "opentelemetry.instrumentation.asgi")


PROGRAM = "asgi-todo"
# prometheus-client's variable: the directory of the gunicorn workers' metric files. The
# gunicorn master sets it (gunicorn_conf) before anything imports prometheus-client (metrics).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ConfigError(Exception):
    """A setting has a bad value; the message is one line that names the variable."""


def refuse(problem: object, *, status: int = 1) -> NoReturn:
    """Stop the process with one line on standard error, behind the one program prefix that
    the CLI, gunicorn's master and start.sh share (docs: Configuration)."""
    print(f"{PROGRAM}: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class Settings(BaseSettings):
    """Everything the service reads from its environment. Build one, pass it in."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    database_url: str = Field(
        default="sqlite:///./asgi_todo.db",
        validation_alias=AliasChoices("database_url", "DATABASE_URL", "SQLALCHEMY_DATABASE_URI"),
        description="A SQLite file, or PostgreSQL: `postgresql://`, `postgres://` and `postgresql+psycopg://` "
        "all use psycopg 3. The original's name, `SQLALCHEMY_DATABASE_URI`, works too.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description=f"The JWT signing key, at least {KEY_MIN_BYTES} bytes. Unset: a random key made once and "
        "shared by every worker: a 0600 file beside a SQLite database, or a row in a PostgreSQL database "
        "(so every host shares it). Set it in production.",
    )
    access_token_expire_minutes: int = Field(default=15, ge=1, le=60 * 24 * 30, description="Access token lifetime.")
    refresh_token_expire_days: int = Field(default=14, ge=1, le=365, description="Refresh token lifetime.")
    login_max_failures: int = Field(
        default=5, ge=1, le=1000, description="Failed password checks per account before a lock."
    )
    login_max_failures_per_client: int = Field(
        default=20, ge=1, le=100_000, description="Failed password checks per client address before a lock."
    )
    login_lock_seconds: int = Field(
        default=30, ge=1, le=3600, description="The first lock window; it doubles with each further failure."
    )
    login_lock_max_seconds: int = Field(default=900, ge=1, le=86_400, description="The longest lock.")
    signup_max_per_client: int = Field(
        default=10, ge=1, le=100_000, description="Sign-ups per client address before a 429."
    )
    signup_window_seconds: int = Field(
        default=3600,
        ge=1,
        le=7 * 86_400,
        description="How long that 429 lasts; a window without sign-ups from the address forgets its count.",
    )
    api_prefix: str = Field(
        default="/api", pattern=r"^(/[A-Za-z0-9._~-]+)*$", description="The prefix of the API's paths."
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="The lowest level logged."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="`text`, or `json` for JSON lines.")
    reset_db: bool = Field(
        default=False,
        description="At start: drop everything, create the schema at the code's revision and load the demo data; "
        "once per start.",
    )
    update_db: bool = Field(
        default=False,
        description="At start: upgrade the schema to the code's revision, load nothing; once per start.",
    )
    bcrypt_rounds: int = Field(default=12, ge=4, le=16, description="The bcrypt cost of new password hashes.")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated origins allowed by CORS (`*` allows any origin, without credentials). "
        "Unset: no CORS.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=100 * 1_048_576, description="Larger request bodies get a 413."
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1_048_576,
        description="A request line plus headers, with a chunked body's trailer fields, over this gets a 431 "
        "and the connection closes (`asgi-todo serve` and gunicorn).",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a client has for its request line and headers (from the connection, or the head's "
        "first byte); then the connection closes.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a request body may go without a byte arriving; then the connection closes, with a "
        "408 if no answer has started. See also `BODY_MIN_RATE`.",
    )
    body_min_rate: int = Field(
        default=500,
        ge=0,
        le=100 * 1_048_576,
        description="Bytes a second a request body must average: it has `BODY_TIMEOUT` seconds, and one more "
        "for each `BODY_MIN_RATE` bytes received; then the connection closes, with a 408 if no answer has "
        "started. `0` turns the rate off.",
    )
    db_threads: int | None = Field(
        default=None, ge=1, le=64, description="Threads that run SQL, and the size of the connection pool."
    )
    db_connect_timeout: float = Field(
        default=5.0, gt=0, le=300, description="Seconds to wait for a database connection before answering 503."
    )
    db_prepared_statements: bool = Field(
        default=True,
        description="psycopg prepares a statement on the server after its fifth run on a connection; "
        "set `0` behind PgBouncer in transaction pooling mode.",
    )
    migration_lock_timeout: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="PostgreSQL: seconds a migration waits for a table lock before it fails and rolls back.",
    )
    sql_echo: bool = Field(default=False, description="Log every SQL statement.")
    metrics: bool = Field(default=True, description="Prometheus metrics at `/metrics`; `0` turns them off.")
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve `/metrics` on this port only (and nothing else there); gunicorn binds it beside `BIND`.",
    )
    metrics_allow_ips: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("127.0.0.1", "::1"),
        description="Without `METRICS_PORT`: the client addresses or networks that may read `/metrics`; "
        "everyone else gets a 404.",
    )
    metrics_dir: str | None = Field(
        default=None,
        description="Under gunicorn, where the workers write their metrics; emptied at each start.",
    )
    tracing: bool = Field(default=False, description="OpenTelemetry traces; needs `pip install 'asgi_todo[otel]'`.")
    drain_seconds: int = Field(
        default=0,
        ge=0,
        le=300,
        description="On SIGTERM, seconds `/readyz` answers 503 while everything else is still served, before the "
        "process stops listening.",
    )
    ready_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="`GET /readyz` checks the database at most once per this many seconds per process,"
        " however often it is probed (0: at every probe, concurrent probes sharing one check).",
    )
    idempotency_ttl: int = Field(
        default=86_400,
        ge=1,
        le=30 * 86_400,
        description=(
            "Seconds an Idempotency-Key is kept with its response: a retry within it is answered"
            " from the first request; after it the key is forgotten and may be used again (docs/retries.md)."
        ),
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value).render_as_string(hide_password=False)

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < KEY_MIN_BYTES:
            hint = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            raise ValueError(f"must be at least {KEY_MIN_BYTES} bytes (make one with: {hint})")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _cors_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [origin.strip() for origin in value.split(",") if origin.strip()]
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin[:80]!r} is not an origin like https://example.com")
        return tuple(value)

    @field_validator("metrics_allow_ips", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        return _addresses(value, what="an IP address or network", allow_any=False)

    @field_validator("tracing")
    @classmethod
    def _tracing(cls, value: bool) -> bool:
        if value and not all(importlib.util.find_spec(name) for name in _OTEL_MODULES):
            raise ValueError("needs OpenTelemetry: pip install 'asgi_todo[otel]'")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


# A default in words, where the field's default is not what a user would write: what unset means.
# What leaving a setting unset means, where its default is computed rather than a value.
UNSET_MEANS = {
    "secret_key": "generated, shared by every worker and host",
    "db_threads": "1 (SQLite), 4 (PostgreSQL)",
    "cors_origins": "none",
    "metrics_port": "none",
    "metrics_dir": "a new temporary directory",
    "host": "127.0.0.1 (serve), 0.0.0.0 (gunicorn)",
    "bind": "HOST:PORT",
    "web_concurrency": "WORKERS_PER_CORE x CPUs, at least 2",
    "max_workers": "none",
    "metrics_host": "where the service listens",
}


def written_default(name: str, model: type[BaseModel] = Settings) -> str:
    """A setting's default as a user writes it in the environment (`0`, `127.0.0.1,::1`), or in
    words where leaving it unset means something (`generated`): the docs' tables and each
    command's `--help` both show this. `model` is any model of settings read from the
    environment, each field named as its variable in lower case."""
    if name in UNSET_MEANS:
        return UNSET_MEANS[name]
    default = model.model_fields[name].default
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(int(default))
    if isinstance(default, tuple):
        return ",".join(default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def normalise_database_url(value: str) -> URL:
    """Accept the URLs people write (`postgres://`, `postgresql://`) and pin our drivers."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("is not a database URL like sqlite:///./todo.db or postgresql://user@host/db") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(f"unsupported database {url.drivername!r}: use sqlite or postgresql")
    if driver == "sqlite" and url.database in (None, "", ":memory:"):
        raise ValueError("SQLite needs a file (an in-memory database is one per connection)")
    return url.set(drivername=driver)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _config_error(exc: ValidationError) -> ConfigError:
    error = exc.errors(include_url=False, include_input=False)[0]
    field = str(error["loc"][0]) if error["loc"] else "settings"
    name = _ENV_NAMES.get(field, field.upper())
    message = error["msg"].removeprefix("Value error, ")
    return ConfigError(f"{name}: {message}")


def _addresses(value: Any, *, what: str, allow_any: bool) -> Any:
    """A comma-separated list of IP addresses or networks (and `*` where allowed)."""
    if isinstance(value, str):
        value = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in value:
        if allow_any and entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry[:80]!r} is not {what}") from None
    return tuple(value)


# Where each launcher listens without HOST or BIND: `asgi-todo serve` is for a developer's
# machine, gunicorn (start.sh) for a container, whose port is published by its runtime.
LAUNCHER_HOSTS = {"serve": "127.0.0.1", "gunicorn": "0.0.0.0"}  # noqa: S104 - a container's port
# The metrics port of a service on unix sockets only: for a scraper on the same host (or pod).
_LOCAL_METRICS_HOST = "127.0.0.1"


class ServerSettings(BaseSettings):
    """How the launchers listen and run: `asgi-todo serve` and gunicorn (start.sh) read this
    one model, from the environment and ./.env, like Settings (an empty variable is an unset
    one). The app itself never reads it."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True)

    host: str | None = Field(
        default=None,
        description=f"Address to listen on, without BIND. Default: {LAUNCHER_HOSTS['serve']} for `asgi-todo serve`, "
        f"{LAUNCHER_HOSTS['gunicorn']} under gunicorn (start.sh, the image).",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on, without BIND.")
    bind: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="gunicorn: where to listen, instead of HOST and PORT: HOST:PORT, [IPV6]:PORT, "
        "unix:PATH or fd://N, several comma-separated.",
    )
    web_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="gunicorn: worker processes. Unset: WORKERS_PER_CORE x CPUs, at least 2, at most MAX_WORKERS.",
    )
    workers_per_core: float = Field(default=1.0, ge=0.01, le=64, description="gunicorn: workers per CPU.")
    max_workers: int | None = Field(
        default=None, ge=1, le=1024, description="gunicorn: at most this many workers from WORKERS_PER_CORE."
    )
    timeout: int = Field(
        default=120, ge=0, le=86_400, description="gunicorn: seconds before a silent worker is killed and replaced."
    )
    graceful_timeout: int = Field(
        default=120,
        ge=0,
        le=86_400,
        description="gunicorn: seconds the requests in flight get to finish on SIGTERM, after DRAIN_SECONDS.",
    )
    keep_alive: int = Field(
        default=5, ge=0, le=3600, description="gunicorn: seconds before an idle keep-alive connection is closed."
    )
    access_log: str = Field(default="-", description="gunicorn: the access log: - for standard output, a file, or off.")
    error_log: str = Field(default="-", description="gunicorn: its log and the app's: - for standard error, or a file.")
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("127.0.0.1", "::1"),
        description="Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: addresses or "
        "networks, comma-separated, or * (only when nothing else can reach the port).",
    )
    metrics_host: str | None = Field(
        default=None,
        description="Address of METRICS_PORT. Default: the host the service listens on (of BIND's first "
        f"HOST:PORT, else HOST); {_LOCAL_METRICS_HOST} when BIND has only unix sockets.",
    )
    dev: bool = Field(default=False, description="Development: `serve --reload`, and start.sh runs it.")

    # Launch settings given as a mapping (tests, deployment files) read nothing else.
    _only_given: ClassVar[bool] = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if cls._only_given:
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings)

    @field_validator("bind", mode="before")
    @classmethod
    def _bind(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [address.strip() for address in value.split(",") if address.strip()]
        for address in value:
            if address.startswith(("unix:", "fd://")):
                continue
            port = address.rpartition(":")[2]
            if ":" not in address or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"{address[:80]!r} is not HOST:PORT, unix:PATH or fd://N")
        return tuple(value)

    @field_validator("access_log", "error_log")
    @classmethod
    def _log_target(cls, value: str) -> str:
        value = value.strip()
        if value in ("-", "") or value.lower() == "off":
            return value or "-"
        if not Path(value).parent.is_dir():
            raise ValueError(f"the directory of {value[:120]!r} does not exist")
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _forwarded(cls, value: Any) -> Any:
        return _addresses(value, what="an IP address, a network or *", allow_any=True)

    @field_validator("host", "metrics_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return value.strip().removeprefix("[").removesuffix("]") if value else None

    def listen_host(self, launcher: str) -> str:
        return self.host or LAUNCHER_HOSTS[launcher]

    def binds(self, launcher: str) -> tuple[str, ...]:
        """gunicorn's addresses: BIND, else HOST:PORT."""
        return self.bind or (host_port(self.listen_host(launcher), self.port),)

    def metrics_host_for(self, service: Sequence[str]) -> str:
        """Where METRICS_PORT listens, for a service listening on `service` (gunicorn's addresses):
        METRICS_HOST, else the host of the first HOST:PORT, else 127.0.0.1 (unix sockets only)."""
        if self.metrics_host:
            return self.metrics_host
        for address in service:
            if not address.startswith(("unix:", "fd://")):
                return address.rpartition(":")[0].removeprefix("[").removesuffix("]")
        return _LOCAL_METRICS_HOST


def host_port(host: str, port: int) -> str:
    """HOST:PORT as gunicorn's BIND and our messages write it ([::1]:8000 for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load_server_settings(
    environ: Mapping[str, str] | None = None, *, overrides: Mapping[str, Any] | None = None
) -> ServerSettings:
    """The launchers' settings: from the environment and ./.env, or only from `environ`;
    `overrides` (command-line options) win."""
    try:
        if environ is None:
            return ServerSettings(**(overrides or {}))
        given: dict[str, Any] = {name.lower(): value for name, value in environ.items() if value.strip()}
        return _GivenServerSettings(**{name: value for name, value in given.items() if name in _SERVER_FIELDS})
    except ValidationError as exc:
        raise _config_error(exc) from None


class _GivenServerSettings(ServerSettings):
    _only_given = True


_SERVER_FIELDS = frozenset(ServerSettings.model_fields)
