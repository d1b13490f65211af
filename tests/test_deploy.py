"""The container files: Dockerfile, .dockerignore, compose.yaml, .env.sample and start.sh.

These read the files, fast and without an engine: what the Dockerfile copies exists and is in
the build context, the image's shape, compose's services, and that the environment compose
gives the app is one the settings accept. tests/test_container.py builds and runs the image.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from asgi_todo.app import create_app
from asgi_todo.gunicorn_conf import read
from asgi_todo.settings import load_settings

from .deployfiles import GUNICORN_VARIABLES, ROOT, START_VARIABLES, dockerfile, image_user, setting_names, stages
from .helpers import ALICE, TOKEN_URL, make_settings, require

# Reading the files


def _ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (last matching line wins)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.strip("/").split("/")
        if any(re.fullmatch(regex, "/".join(parts[: index + 1])) for index in range(len(parts))):
            ignored = not negated
    return ignored


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def _sample() -> tuple[dict[str, str], dict[str, str], list[str]]:
    """.env.sample: the values set, the defaults shown in comments, and its lines."""
    lines = (ROOT / ".env.sample").read_text().splitlines()
    active: dict[str, str] = {}
    shown: dict[str, str] = {}
    for line in lines:
        found = re.fullmatch(r"(# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if found:
            (shown if found.group(1) else active)[found.group(2)] = found.group(3)
    return active, shown, lines


def _interpolate(text: str, values: Mapping[str, str]) -> str:
    """compose's ${NAME}, ${NAME:-default}, ${NAME:?error} and $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = values.get(name, "")
        if operator == ":-" and not value:
            return argument or ""
        if operator == ":?" and not value:
            raise AssertionError(f"compose would stop: {argument}")
        return value

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", one, text)


# The Dockerfile


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    copies = [arguments for keyword, arguments in dockerfile() if keyword == "COPY" and "--from" not in arguments]
    assert copies
    for arguments in copies:
        sources = [word for word in arguments.split() if not word.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not _ignored(source), f"COPY {source}: left out by .dockerignore"


def test_context_leaves_out_secrets_databases_and_tests() -> None:
    for path in (".env", ".git", ".venv", "tests", "tests/test_deploy.py", "asgi_todo.db", "x/__pycache__/a.pyc"):
        assert _ignored(path), path
    for path in ("asgi_todo/app.py", "start.sh", "requirements.txt", "setup.cfg", "pyproject.toml", "README.md"):
        assert not _ignored(path), path


def test_image_is_slim_python_non_root_with_a_health_check() -> None:
    built = stages()
    assert all(stage[0][1].split()[0].startswith("python:3.11-slim") for stage in built)
    final = built[-1]
    keywords = [keyword for keyword, _ in final]
    assert image_user().split(":")[0] not in ("root", "0")
    (healthcheck,) = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]
    assert "/health" in healthcheck
    assert "curl" not in healthcheck  # not in the slim image
    assert [arguments for keyword, arguments in final if keyword == "EXPOSE"] == ["8000"]
    assert json.loads([arguments for keyword, arguments in final if keyword == "CMD"][-1]) == ["./start.sh"]
    assert keywords.index("USER") < keywords.index("CMD")
    text = " ".join(arguments for _, arguments in final)
    for tool in ("gcc", "build-essential", "tests"):
        assert tool not in text, f"{tool} in the final image"


def test_requirements_install_before_the_code_for_the_layer_cache() -> None:
    build = [f"{keyword} {arguments}" for keyword, arguments in stages()[0]]
    requirements = build.index("COPY requirements.txt ./")
    installed = next(index for index, step in enumerate(build) if "pip install -r requirements.txt" in step)
    code = next(index for index, step in enumerate(build) if step.startswith("COPY asgi_todo"))
    package = next(index for index, step in enumerate(build) if "pip install --no-deps ." in step)
    assert requirements < installed < code < package


def test_start_sh_is_executable_and_execs_gunicorn_with_our_configuration() -> None:
    script = ROOT / "start.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#! /usr/bin/env sh\n")
    assert """exec gunicorn -c python:asgi_todo.gunicorn_conf "$@" 'asgi_todo.app:create_app()'""" in text


# compose.yaml


def test_compose_runs_the_app_on_a_healthy_postgres_with_a_named_volume() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"app", "db", "migrate"}
    database, app, migrate = (compose["services"][name] for name in ("db", "app", "migrate"))
    assert database["image"] == "postgres:15"
    assert "pg_isready" in " ".join(database["healthcheck"]["test"])
    assert set(compose["volumes"]) == {"pgdata"}
    assert "pgdata:/var/lib/postgresql/data" in database["volumes"]
    assert app["build"] == "."
    assert app["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert {"DATABASE_URL", "SECRET_KEY"} <= set(app["environment"])
    # The migration runs the documented command, on the app's image and database, first.
    assert migrate["command"] == ["asgi-todo", "db", "upgrade"]
    assert (migrate["image"], migrate["env_file"]) == (app["image"], app["env_file"])
    assert migrate["environment"]["DATABASE_URL"] == app["environment"]["DATABASE_URL"]
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}


def test_compose_gives_the_app_an_environment_the_settings_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    active, _, _ = _sample()
    values = {
        **active,
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "APP_DB_PASSWORD": secrets.token_urlsafe(24),
        "SECRET_KEY": secrets.token_urlsafe(48),
    }
    app = _compose()["services"]["app"]
    assert app["env_file"] == ".env"
    environment = {**values, **{name: _interpolate(str(value), values) for name, value in app["environment"].items()}}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert settings.database_url.startswith("postgresql+psycopg://asgi_todo_app:")
    assert settings.database_url.endswith("@db:5432/asgi_todo")
    assert settings.update_db
    assert not settings.reset_db
    options = read(environment, cores=2)
    grace = int(str(app["stop_grace_period"]).removesuffix("s"))
    assert options.graceful_timeout < grace, "Docker would kill requests still finishing"


def test_compose_secrets_must_be_set() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    with pytest.raises(AssertionError, match="SECRET_KEY"):
        _interpolate(compose, {"POSTGRES_PASSWORD": "set"})
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        _interpolate(compose, {"SECRET_KEY": "set"})
    with pytest.raises(AssertionError, match="APP_DB_PASSWORD"):
        _interpolate(compose, {"SECRET_KEY": "set", "POSTGRES_PASSWORD": "set"})


def test_compose_runs_the_app_read_only_without_capabilities() -> None:
    """docs: Deployment, docker compose. A read-only root, writable /tmp only (the metrics files and
    gunicorn's), no capabilities, no privilege gained through set-uid files; the migration
    too (the same x-app)."""
    services = _compose()["services"]
    for name in ("app", "migrate"):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["tmpfs"] == ["/tmp"], name
    values = {"SECRET_KEY": "s", "POSTGRES_PASSWORD": "p", "APP_DB_PASSWORD": "a"}
    environment = {name: _interpolate(str(value), values) for name, value in services["app"]["environment"].items()}
    metrics_dir = environment.get("METRICS_DIR", "/tmp")  # gunicorn_conf: a new temporary directory
    assert metrics_dir.startswith("/tmp")


def test_compose_connects_the_app_as_its_own_role_made_by_the_superuser() -> None:
    """The app's role is not the image's superuser: the init script, run by the superuser at
    the volume's first start, makes it (tests/test_deploy.py runs the script for real)."""
    compose = _compose()
    values = {"SECRET_KEY": "s", "POSTGRES_PASSWORD": "p", "APP_DB_PASSWORD": "a"}
    database = compose["services"]["db"]
    db_environment = {name: _interpolate(str(value), values) for name, value in database["environment"].items()}
    app_url = _interpolate(compose["services"]["app"]["environment"]["DATABASE_URL"], values)
    user = app_url.removeprefix("postgresql://").split(":")[0]
    assert user == db_environment["APP_DB_USER"] != db_environment["POSTGRES_USER"]
    assert f"{user}:{db_environment['APP_DB_PASSWORD']}@" in app_url
    mounts = [volume.split(":") for volume in database["volumes"]]
    (script,) = [source for source, target, *_ in mounts if target.startswith("/docker-entrypoint-initdb.d/")]
    assert (ROOT / script).is_file()
    assert os.access(ROOT / script, os.X_OK)


def test_compose_trusts_the_gateway_a_host_proxy_connects_through() -> None:
    """Behind a proxy on the host, the app sees every client as the network's gateway; that
    address, and only it, is trusted for X-Forwarded-For (docs: Behind a proxy, Per setup)."""
    compose = _compose()
    (network,) = compose["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(_interpolate(network["subnet"], {}))
    gateway = ipaddress.ip_address(_interpolate(network["gateway"], {}))
    assert gateway in subnet
    trusted = _interpolate(compose["services"]["app"]["environment"]["FORWARDED_ALLOW_IPS"], {})
    assert trusted == str(gateway)
    assert compose["services"]["app"]["ports"] == ["127.0.0.1:${APP_PORT:-8000}:8000"]  # only the host reaches it


def _sentences(path: str, word: str) -> list[str]:
    """The sentences of a file that name `word`, comment markers and line breaks dropped."""
    text = re.sub(r"\n\s*#?\s*", " ", (ROOT / path).read_text())
    return [sentence for sentence in re.split(r"(?<=[.;])\s", text) if word in sentence]


def test_compose_docs_and_env_sample_agree_that_update_db_can_stay_on() -> None:
    for path in ("compose.yaml", "docs/deployment.md"):
        sentences = _sentences(path, "UPDATE_DB")
        assert any("safe to leave on" in sentence for sentence in sentences), (path, sentences)
        assert not [sentence for sentence in sentences if re.search(r"UPDATE_DB.*\bremove it", sentence)], path
    _, _, lines = _sample()
    comment = lines[lines.index("UPDATE_DB=1") - 1]
    assert comment.startswith("# "), comment
    assert "safe to leave on" in comment, comment


# .env.sample


def test_env_sample_lists_every_variable_with_a_comment() -> None:
    active, shown, lines = _sample()
    listed = set(active) | set(shown)
    compose_names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))
    wanted = setting_names() | GUNICORN_VARIABLES | START_VARIABLES | compose_names
    assert wanted - {"SQLALCHEMY_DATABASE_URI"} <= listed, f"missing: {sorted(wanted - listed)}"
    for index, line in enumerate(lines):
        if re.fullmatch(r"(# )?[A-Z][A-Z0-9_]*=.*", line):
            above = index - 1
            while re.fullmatch(r"(# )?[A-Z][A-Z0-9_]*=.*", lines[above]):
                above -= 1
            assert lines[above].startswith("# "), f"no comment above {line!r}"


def test_env_sample_defaults_are_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    active, shown, _ = _sample()
    environment = {**shown, **active, "SECRET_KEY": secrets.token_urlsafe(48)}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    load_settings(_env_file=None)
    read(environment, cores=2)


@pytest.mark.process
def test_the_init_script_makes_a_role_that_owns_the_apps_tables(postgres_url: str) -> None:
    """deploy/compose/initdb-app-role.sh as the postgres image runs it (as the superuser, on
    the new database), here on the test's PostgreSQL: the app's role is no superuser, the
    migration made as it leaves it owning every table, and the app serves as it."""
    url = make_url(postgres_url)
    role = f"asgi_todo_app_{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": str(url.database),
        "APP_DB_USER": role,
        "APP_DB_PASSWORD": "a password 'quoted'",
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
    }
    psql = ["psql", "-h", env["PGHOST"], "-p", env["PGPORT"], "-U", env["POSTGRES_USER"], "-d", env["POSTGRES_DB"]]
    script = ROOT / "deploy" / "compose" / "initdb-app-role.sh"
    try:
        made = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        app_url = url.set(username=role).render_as_string(hide_password=False)
        upgraded = subprocess.run(
            [sys.executable, "-m", "asgi_todo", "db", "upgrade"],
            env={**env, "DATABASE_URL": app_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert upgraded.returncode == 0, upgraded.stderr

        def query(sql: str) -> str:
            return subprocess.run([*psql, "-tAc", sql], capture_output=True, text=True, check=True).stdout.strip()

        assert query(f"SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = '{role}'") == "f"  # noqa: S608 - our own name
        owners = set(query("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").split())
        assert owners == {role}
        with TestClient(create_app(make_settings(app_url))) as client:  # RESET_DB too: drops and creates as the role
            assert client.post(TOKEN_URL, data={"username": ALICE[0], "password": ALICE[1]}).status_code == 200
    finally:
        subprocess.run([*psql, "-c", f'REASSIGN OWNED BY "{role}" TO "{env["POSTGRES_USER"]}"'], capture_output=True)
        subprocess.run([*psql, "-c", f'DROP OWNED BY "{role}"'], capture_output=True)
        subprocess.run([*psql, "-c", f'DROP ROLE IF EXISTS "{role}"'], capture_output=True, check=True)


# deploy/proxies


PROXIES = ROOT / "deploy" / "proxies"


@pytest.mark.parametrize("name", ["nginx.conf", "haproxy.cfg", "Caddyfile"])
def test_each_proxy_example_names_the_address_to_trust(name: str) -> None:
    """Every example says which address the app sees it connect from, as a
    FORWARDED_ALLOW_IPS line, and never trusts everything (docs: Behind a proxy, Per setup)."""
    text = (PROXIES / name).read_text()
    trusted = re.findall(r"FORWARDED_ALLOW_IPS=([^\s]+)", text)
    assert trusted, name
    for value in trusted:
        entry = _interpolate(value, {})
        assert entry != "*"
        ipaddress.ip_address(entry)


def test_the_edge_proxies_write_x_forwarded_for_afresh() -> None:
    """A client's own X-Forwarded-For never reaches the app through them."""
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in (PROXIES / "nginx.conf").read_text()
    haproxy = (PROXIES / "haproxy.cfg").read_text()
    assert haproxy.index("http-request del-header X-Forwarded-For") < haproxy.index("option forwardfor")


@pytest.mark.process
def test_the_haproxy_example_is_valid() -> None:
    require(shutil.which("haproxy") is not None, "haproxy (Debian package haproxy)")
    checked = subprocess.run(["haproxy", "-c", "-f", str(PROXIES / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
