"""Composed fixtures: database_url -> settings -> app -> client -> auth headers, and the
markers that say what a test costs.

Every test that reaches the database runs twice, on SQLite and on PostgreSQL, each time on a
database of its own in the prepared state: the schema and the demo data, made once per
session (tests/databases.py). Without a reachable PostgreSQL those runs skip locally and fail
in CI (CI=true).

`pytest` with no `-m` is the quick loop: the slow kinds below are left out. `pytest -m full`
runs everything (every test carries `full`), and so does any other `-m`.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo import refresh
from asgi_todo.app import create_app
from asgi_todo.context import Services
from asgi_todo.models import utcnow
from asgi_todo.settings import Settings

from . import helpers
from .databases import PreparedPostgres, PreparedSqlite
from .helpers import ALICE, JOHN, POSTGRES_ADMIN_URL, bearer, login, make_settings, postgres_database, require

# What a test costs beyond its own work, by marker: these are left out of the quick loop.
SLOW = ("process", "cluster", "container", "twins")


# xdist workers (`-n auto` in setup.cfg): the quick loop's tests spend much of their time waiting
# on PostgreSQL, which 4 workers on 2 cores overlap (measured: about 90 s with 2, 80 with 4);
# the slow kinds start servers and clusters, and keep to 2.
QUICK_WORKERS = 4
FULL_WORKERS = 2


def pytest_configure(config: pytest.Config) -> None:
    helpers.QUICK = not config.option.markexpr


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return FULL_WORKERS if config.option.markexpr else QUICK_WORKERS


def pytest_itemcollected(item: pytest.Item) -> None:
    item.add_marker(pytest.mark.full)
    for kind in ("cluster", "container"):  # one worker each under xdist: namespaces and images are shared
        if item.get_closest_marker(kind):
            item.add_marker(pytest.mark.xdist_group(kind))
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("app_kind", "asgi_todo") != "asgi_todo":
        item.add_marker(pytest.mark.twins)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without `-m`, the quick loop: every test but the slow kinds (SLOW)."""
    if config.option.markexpr:
        return
    slow = [item for item in items if any(item.get_closest_marker(name) for name in SLOW)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not any(item.get_closest_marker(name) for name in SLOW)]


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.option.markexpr:
        return None
    return f"quick loop: tests marked {', '.join(SLOW)} are left out; `-m full` runs everything"


class _UnmarkedProcess(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError(
            "this test starts a process: mark it process (or cluster, container) so the quick loop leaves it out"
        )


@pytest.fixture(autouse=True)
def _processes_are_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test that starts a subprocess says so with a marker (the quick loop has none)."""
    if not any(request.node.get_closest_marker(name) for name in ("process", "cluster", "container")):
        monkeypatch.setattr(subprocess, "Popen", _UnmarkedProcess)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built by tests must not pick up the developer's own environment."""
    for name in [*Settings.model_fields, "SQLALCHEMY_DATABASE_URI"]:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError:
        engine.dispose()
        require(False, f"PostgreSQL at {engine.url.render_as_string()}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def prepared_postgres(postgres_admin: sa.Engine) -> Iterator[PreparedPostgres]:
    prepared = PreparedPostgres.build(postgres_admin)
    yield prepared
    prepared.close()


@pytest.fixture(scope="session")
def prepared_sqlite(tmp_path_factory: pytest.TempPathFactory) -> PreparedSqlite:
    return PreparedSqlite.build(tmp_path_factory.mktemp("template"))


@pytest.fixture
def prepared_postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A PostgreSQL database of this test's own, in the prepared state (schema, demo data)."""
    prepared: PreparedPostgres = request.getfixturevalue("prepared_postgres")
    with prepared.database() as url:
        yield url


@pytest.fixture
def prepared_sqlite_url(tmp_path: Path, prepared_sqlite: PreparedSqlite) -> str:
    """A SQLite file of this test's own, in the prepared state (schema, demo data)."""
    return prepared_sqlite.copy(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A database of this test's own in the prepared state, on each kind."""
    url: str = request.getfixturevalue("prepared_sqlite_url" if request.param == "sqlite" else "prepared_postgres_url")
    return url


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new PostgreSQL database with nothing in it, dropped afterwards."""
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    with postgres_database(admin, f"asgi_todo_test_{uuid.uuid4().hex[:12]}") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """Where a SQLite file would be: nothing there yet."""
    return f"sqlite:///{tmp_path}/todo.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    """A database with no table yet (a migration's starting point), on each kind."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Cheap bcrypt, a fixed key; the database is prepared already (schema and demo data), for
    asgi_todo and the twins alike: they share its schema."""
    return make_settings(database_url, reset_db=False)


APP_KINDS = ("asgi_todo", "fastapi", "litestar", "fastapi-ourdata")
TWINS = {"fastapi": "FastAPI twin", "litestar": "Litestar twin", "fastapi-ourdata": "FastAPI-over-our-data twin"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests in a module or function marked `twin` run on asgi_todo and on each twin."""
    if metafunc.definition.get_closest_marker("twin") and "app_kind" in metafunc.fixturenames:
        metafunc.parametrize("app_kind", APP_KINDS, indirect=True)


@pytest.fixture
def app_kind(request: pytest.FixtureRequest) -> str:
    kind: str = getattr(request, "param", "asgi_todo")
    return kind


@pytest.fixture
def app(settings: Settings, app_kind: str, request: pytest.FixtureRequest) -> object:
    """asgi_todo; or, for tests marked `twin`, also the benchmark's FastAPI and Litestar twins.

    On a twin, a test marked `twin_differs(reason, twin=...)` (the FastAPI twin unless said)
    is expected to fail: a known, deliberate difference of that twin."""
    if app_kind == "asgi_todo":
        return create_app(settings)
    for differs in request.node.iter_markers("twin_differs"):
        if differs.kwargs.get("twin", "fastapi") == app_kind:
            reason = f"{TWINS[app_kind]}: {differs.args[0]}"
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    if app_kind == "litestar":
        from tests.bench.litestar_twin import create_app as create_litestar

        return create_litestar(settings)
    if app_kind == "fastapi-ourdata":
        from tests.bench.fastapi_ourdata_twin import create_app as create_ourdata

        return create_ourdata(settings)
    from tests.bench.fastapi_twin import create_app as create_twin

    return create_twin(settings)


@pytest.fixture
def client(app: object) -> Iterator[TestClient]:
    # Never follow a redirect: the docs promise direct answers (API: no 307), and a test that
    # followed one would not see it.
    with TestClient(app, follow_redirects=False) as test_client:  # type: ignore[arg-type]
        yield test_client


def _signed_in(client: TestClient, app_kind: str, user_id: int, email: str, password: str) -> dict[str, str]:
    """Auth headers of a new login of a demo user. On asgi_todo the login is made as the
    token endpoint makes it (a logins row, its first refresh token, an access token naming it)
    without the password check: bcrypt and lockout have tests of their own, through the
    endpoint. It is one unit of work of the app's own, on its SQL threads and their
    connections (a connection of the test's would cost PostgreSQL a new backend per test).
    The twins keep their own token endpoint."""
    if app_kind != "asgi_todo":
        return login(client, email, password)
    services: Services = client.app_state["services"]
    lifetime = timedelta(days=services.settings.refresh_token_expire_days)

    def sign_in(session: sa.orm.Session) -> refresh.Grant:
        version = refresh.lock_user(session, user_id=user_id)
        assert version is not None, f"no demo user {user_id}"
        return refresh.start(
            session, user_id=user_id, token_version=version, client="testclient", lifetime=lifetime, now=utcnow()
        )

    assert client.portal is not None, "a client in its `with` block"
    with services.db.sessions() as session:
        grant = client.portal.call(partial(services.db.write, session, sign_in))
    return bearer(services.tokens.issue(user_id, version=grant.token_version, login=grant.login))


@pytest.fixture
def john(client: TestClient, app_kind: str) -> dict[str, str]:
    """Auth headers of the demo superuser (user id 1)."""
    return _signed_in(client, app_kind, 1, *JOHN)


@pytest.fixture
def alice(client: TestClient, app_kind: str) -> dict[str, str]:
    """Auth headers of the demo ordinary user (user id 2)."""
    return _signed_in(client, app_kind, 2, *ALICE)
