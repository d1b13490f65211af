"""Composed fixtures: database_url -> settings -> app -> client -> auth headers.

Every test that reaches the database runs twice, on a fresh SQLite file and on a fresh
PostgreSQL database (created and dropped around the test). Without a reachable PostgreSQL
those runs skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from asgi_todo.app import create_app
from asgi_todo.settings import Settings

from .helpers import ALICE, JOHN, POSTGRES_ADMIN_URL, login, make_settings, postgres_database, require


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


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    with postgres_database(admin, f"asgi_todo_test_{uuid.uuid4().hex[:12]}") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{tmp_path}/todo.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url" if request.param == "sqlite" else "postgres_url")
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Demo data loaded (RESET_DB), cheap bcrypt, a fixed key."""
    return make_settings(database_url)


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
    # Never follow a redirect: the README promises direct answers (no 307), and a test that
    # followed one would not see it.
    with TestClient(app, follow_redirects=False) as test_client:  # type: ignore[arg-type]
        yield test_client


@pytest.fixture
def john(client: TestClient) -> dict[str, str]:
    """Auth headers of the demo superuser (user id 1)."""
    return login(client, *JOHN)


@pytest.fixture
def alice(client: TestClient) -> dict[str, str]:
    """Auth headers of the demo ordinary user (user id 2)."""
    return login(client, *ALICE)
