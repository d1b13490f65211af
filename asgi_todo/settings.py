"""One frozen settings object, read from the environment (and an optional `.env`) once."""

from __future__ import annotations

import importlib.util
import ipaddress
import sys
from typing import Annotated, Any, Literal, NoReturn

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
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


class ConfigError(Exception):
    """A setting has a bad value; the message is one line that names the variable."""


def refuse(problem: object, *, status: int = 1) -> NoReturn:
    """Stop the process with one line on standard error, behind the one program prefix that
    the CLI, gunicorn's master and start.sh share (README, "Configuration")."""
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
    )
    secret_key: SecretStr | None = None
    access_token_expire_minutes: int = Field(default=15, ge=1, le=60 * 24 * 30)
    refresh_token_expire_days: int = Field(default=14, ge=1, le=365)
    login_max_failures: int = Field(default=5, ge=1, le=1000)
    login_max_failures_per_client: int = Field(default=20, ge=1, le=100_000)
    login_lock_seconds: int = Field(default=30, ge=1, le=3600)
    login_lock_max_seconds: int = Field(default=900, ge=1, le=86_400)
    signup_max_per_client: int = Field(default=10, ge=1, le=100_000)
    signup_window_seconds: int = Field(default=3600, ge=1, le=7 * 86_400)
    api_prefix: str = Field(default="/api", pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    reset_db: bool = False
    update_db: bool = False
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=100 * 1_048_576)
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    header_timeout: float = Field(default=10.0, gt=0, le=300)
    db_threads: int | None = Field(default=None, ge=1, le=64)
    db_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    db_prepared_statements: bool = True
    migration_lock_timeout: float = Field(default=5.0, gt=0, le=3600)
    sql_echo: bool = False
    metrics: bool = True
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_allow_ips: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1", "::1")
    metrics_dir: str | None = None
    tracing: bool = False
    drain_seconds: int = Field(default=0, ge=0, le=300)
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
        if isinstance(value, str):
            value = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry[:80]!r} is not an IP address or network") from None
        return tuple(value)

    @field_validator("tracing")
    @classmethod
    def _tracing(cls, value: bool) -> bool:
        if value and not all(importlib.util.find_spec(name) for name in _OTEL_MODULES):
            raise ValueError("needs OpenTelemetry: pip install 'asgi_todo[otel]'")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


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
        error = exc.errors(include_url=False, include_input=False)[0]
        field = str(error["loc"][0]) if error["loc"] else "settings"
        name = _ENV_NAMES.get(field, field.upper())
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None
