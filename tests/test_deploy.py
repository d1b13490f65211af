"""The container files: Dockerfile, .dockerignore, compose.yaml, .env.sample and start.sh.

These read the files, fast and without an engine: what the Dockerfile copies exists and is in
the build context, the image's shape, compose's services, and that the environment compose
gives the app is one the settings accept. tests/test_container.py builds and runs the image.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from asgi_todo.gunicorn_conf import read
from asgi_todo.settings import load_settings

from .deployfiles import GUNICORN_VARIABLES, ROOT, START_VARIABLES, dockerfile, image_user, setting_names, stages

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
    values = {**active, "POSTGRES_PASSWORD": secrets.token_urlsafe(24), "SECRET_KEY": secrets.token_urlsafe(48)}
    app = _compose()["services"]["app"]
    assert app["env_file"] == ".env"
    environment = {**values, **{name: _interpolate(str(value), values) for name, value in app["environment"].items()}}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert settings.database_url.startswith("postgresql+psycopg://asgi_todo:")
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
