"""Settings: names as in the docs (Configuration), the original's alias, one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asgi_todo.launch import unknown_settings
from asgi_todo.settings import ConfigError, Settings, load_server_settings, load_settings

from .helpers import SECRET_KEY


def test_defaults() -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url.startswith("sqlite:///")
    assert settings.access_token_expire_minutes == 15
    assert settings.api_prefix == "/api"
    assert settings.bcrypt_rounds == 12
    assert settings.secret_key is None
    assert not settings.reset_db
    assert not settings.update_db


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLALCHEMY_DATABASE_URI", "postgres://app:pw@db.internal:5432/todo")
    monkeypatch.setenv("SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("ACCESS_TOKEN_EXPIRE_MINUTES", "30")
    monkeypatch.setenv("API_PREFIX", "/v1")
    monkeypatch.setenv("RESET_DB", "1")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    settings = load_settings(_env_file=None)
    assert settings.database_url == "postgresql+psycopg://app:pw@db.internal:5432/todo"
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == SECRET_KEY
    assert settings.access_token_expire_minutes == 30
    assert settings.api_prefix == "/v1"
    assert settings.reset_db
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.log_level == "debug"


def test_database_url_wins_over_the_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/one")
    monkeypatch.setenv("SQLALCHEMY_DATABASE_URI", "postgresql://postgres@127.0.0.1/two")
    assert load_settings(_env_file=None).database_url.endswith("/one")


def test_dotenv_file(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    with open(".env", "w") as env_file:
        env_file.write("API_PREFIX=/from-dotenv\nBCRYPT_ROUNDS=5\n")
    settings = load_settings()
    assert settings.api_prefix == "/from-dotenv"
    assert settings.bcrypt_rounds == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("SECRET_KEY", "too-short", id="short-key"),
        pytest.param("DATABASE_URL", "mysql://root@localhost/todo", id="unsupported-database"),
        pytest.param("DATABASE_URL", "not a url", id="not-a-url"),
        pytest.param("DATABASE_URL", "sqlite:///:memory:", id="sqlite-memory"),
        pytest.param("ACCESS_TOKEN_EXPIRE_MINUTES", "0", id="zero-expiry"),
        pytest.param("ACCESS_TOKEN_EXPIRE_MINUTES", "soon", id="word-expiry"),
        pytest.param("API_PREFIX", "api", id="prefix-without-slash"),
        pytest.param("API_PREFIX", "/api/", id="prefix-trailing-slash"),
        pytest.param("BCRYPT_ROUNDS", "3", id="weak-bcrypt"),
        pytest.param("BCRYPT_ROUNDS", "40", id="absurd-bcrypt"),
        pytest.param("RESET_DB", "maybe", id="not-a-bool"),
        pytest.param("LOG_LEVEL", "loud", id="log-level"),
        pytest.param("CORS_ORIGINS", "example.com", id="origin-without-scheme"),
        pytest.param("MAX_BODY_BYTES", "-1", id="negative-body-limit"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(_env_file=None)
    message = str(raised.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message
    if variable == "SECRET_KEY":
        assert value not in message


@pytest.mark.process
def test_bad_value_stops_the_cli_with_one_line(tmp_path: object) -> None:
    env = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "short", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    result = subprocess.run(
        [sys.executable, "-m", "asgi_todo", "serve"], env=env, capture_output=True, text=True, cwd=str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "asgi-todo: SECRET_KEY: must be at least 32 bytes (make one with: "
        "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
    ]


@pytest.mark.process
def test_bad_value_stops_a_server_started_by_uvicorn(tmp_path: object) -> None:
    env = {"PATH": "/usr/bin:/bin", "BCRYPT_ROUNDS": "many", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "asgi_todo.app:create_app", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "asgi-todo: BCRYPT_ROUNDS: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_are_frozen() -> None:
    settings = Settings(_env_file=None)
    with pytest.raises(ValueError, match="frozen"):
        settings.api_prefix = "/other"  # type: ignore[misc]


# The launchers' server settings (docs: Configuration, The two launchers)


@pytest.mark.parametrize(
    ("environ", "host"),
    [
        pytest.param({}, "0.0.0.0", id="gunicorn-default"),  # noqa: S104 - the container's default
        pytest.param({"HOST": "127.0.0.1"}, "127.0.0.1", id="host"),
        pytest.param({"BIND": "127.0.0.1:8000"}, "127.0.0.1", id="bind-host"),
        pytest.param({"BIND": "[::1]:8000", "HOST": "10.0.0.9"}, "::1", id="bind-wins-over-host"),
        pytest.param({"BIND": "unix:/run/app.sock, 10.0.0.5:8000"}, "10.0.0.5", id="first-tcp-address"),
        pytest.param({"BIND": "unix:/run/app.sock"}, "127.0.0.1", id="unix-socket-only"),
        pytest.param({"BIND": "127.0.0.1:8000", "METRICS_HOST": "[::]"}, "::", id="metrics-host"),
    ],
)
def test_metrics_host_follows_the_service(environ: dict[str, str], host: str) -> None:
    settings = load_server_settings(environ)
    assert settings.metrics_host_for(settings.binds("gunicorn")) == host


def test_server_settings_from_a_mapping_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    assert load_server_settings({}).port == 8000
    assert load_server_settings({"PORT": "81", "WEB_CONCURRENCY": ""}).web_concurrency is None  # empty is unset
    assert load_server_settings({"PORT": "81"}).port == 81


@pytest.mark.parametrize(
    ("environ", "dotenv", "warned"),
    [
        pytest.param({"LOG_LEVLE": "debug"}, {}, {"LOG_LEVLE": "LOG_LEVEL"}, id="typo-in-environment"),
        pytest.param({}, {"LOG_LEVLE": "debug"}, {"LOG_LEVLE": "LOG_LEVEL"}, id="typo-in-dotenv"),
        pytest.param({"WORKERS": "4"}, {}, {"WORKERS": "WEB_CONCURRENCY"}, id="another-servers-name"),
        pytest.param(
            {"DATABSE_URL": "x", "METRIC_PORT": "1"},
            {},
            {"DATABSE_URL": "DATABASE_URL", "METRIC_PORT": "METRICS_PORT"},
            id="typos",
        ),
        pytest.param({"LOG_LEVLE": "a"}, {"LOG_LEVLE": "b"}, {"LOG_LEVLE": "LOG_LEVEL"}, id="once"),
        pytest.param(
            {
                "HOME": "/root",
                "HOSTNAME": "pod-1",
                "ASGI_TODO_SERVICE_HOST": "10.0.0.1",
                "KUBERNETES_PORT": "tcp://x",
                "PYTHON_VERSION": "3.11",
                "LANG": "C.UTF-8",
                "TERM": "xterm",
                "PATH": "/bin",
                "DEBUG": "1",
            },
            {},
            {},
            id="other-programs-variables",
        ),
        pytest.param(
            {"OTEL_SERVICE_NAME": "x", "SQLALCHEMY_DATABASE_URI": "x", "PRE_START_PATH": "x"},
            {"COMPOSE_PROJECT_NAME": "x", "POSTGRES_PASSWORD": "x"},
            {},
            id="known-and-foreign",
        ),
    ],
)
def test_a_mistyped_setting_is_named(
    environ: dict[str, str], dotenv: dict[str, str | None], warned: dict[str, str]
) -> None:
    lines = list(unknown_settings(environ, dotenv))
    found = {line.split()[0]: line.rsplit("did you mean ", 1)[1].rstrip("?") for line in lines}
    assert found == warned
