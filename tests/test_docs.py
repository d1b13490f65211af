"""Swagger UI at /docs and ReDoc at /redoc: every asset local, a strict CSP; in a real browser,
the password flow in Swagger UI and every operation rendered by ReDoc."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from asgi_todo.api import OPERATIONS
from asgi_todo.app import create_app
from asgi_todo.docs import ASSETS, MANIFEST, read_manifest

from .helpers import ALICE, JOHN, make_settings, require
from .servers import server_env, start_uvicorn

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
TIMEOUT_MS = 20_000


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(sqlite_url))) as test_client:
        yield test_client


def _urls(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def test_swagger_ui_is_version_5() -> None:
    # 4.x cannot render OpenAPI 3.1.
    assert read_manifest()["swagger-ui-dist"].version.startswith("5.")


def test_vendored_files_are_those_of_the_manifest() -> None:
    """Every file under asgi_todo/static is in the manifest with its sha256, and every
    manifest entry is on disk: an edited, added or missing asset fails here."""
    manifest = read_manifest()
    on_disk = {path.relative_to(ASSETS).as_posix() for path in ASSETS.rglob("*") if path.is_file()}
    listed = {f"{vendored.directory}/{name}" for vendored in manifest.values() for name in vendored.files}
    assert on_disk == listed | {MANIFEST}
    for vendored in manifest.values():
        for name, digest in vendored.files.items():
            assert hashlib.sha256((ASSETS / vendored.directory / name).read_bytes()).hexdigest() == digest, name
        assert "LICENSE" in vendored.files  # each package ships with its licence
        assert vendored.integrity.startswith("sha512-")


def _fake_npm(tmp_path: Path) -> Path:
    """An `npm` whose `pack` answers from tarballs made of the committed files, laid out as
    in the npm packages, so the script runs offline."""
    from tests.tools.vendor_ui import SOURCES

    registry = tmp_path / "registry"
    registry.mkdir()
    for package, vendored in read_manifest().items():
        with tarfile.open(registry / f"{package}-{vendored.version}.tgz", "w:gz") as archive:
            for name, member in SOURCES[package].files.items():
                archive.add(ASSETS / vendored.directory / name, arcname=member)
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    npm.write_text(
        f"""#!{sys.executable}
import hashlib, base64, json, shutil, sys
spec = sys.argv[-1]
name, _, version = spec.rpartition("@")
tarball = {str(registry)!r} + f"/{{name}}-{{version}}.tgz"
shutil.copy(tarball, sys.argv[sys.argv.index("--pack-destination") + 1])
digest = base64.b64encode(hashlib.sha512(open(tarball, "rb").read()).digest()).decode()
print(json.dumps([{{"name": name, "version": version, "filename": tarball.rsplit("/", 1)[1],
                   "integrity": "sha512-" + digest}}]))
"""
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return npm.parent


@pytest.mark.process
def test_the_vendoring_script_writes_the_committed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.tools.vendor_ui import vendor

    monkeypatch.setenv("PATH", f"{_fake_npm(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    target = tmp_path / "static"
    written = vendor({package: vendored.version for package, vendored in read_manifest().items()}, assets=target)

    assert {package: dict(vendored.files) for package, vendored in written.items()} == {
        package: dict(vendored.files) for package, vendored in read_manifest().items()
    }
    for path in ASSETS.rglob("*"):
        if path.is_file() and path.name != MANIFEST:
            assert (target / path.relative_to(ASSETS)).read_bytes() == path.read_bytes(), path
    written_manifest = json.loads((target / MANIFEST).read_text())
    assert {package: entry["files"] for package, entry in written_manifest.items()} == {
        package: entry["files"] for package, entry in json.loads((ASSETS / MANIFEST).read_text()).items()
    }


PAGES = [pytest.param("/docs", id="swagger-ui"), pytest.param("/redoc", id="redoc")]


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_its_assets_from_this_app(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = _urls(response.text)
    assert urls
    for url in urls:
        assert not re.match(r"^[a-z]+:|^//", url), url  # relative: this origin
        asset = client.get("/" + url)
        assert asset.status_code == 200, url
    assert 'data-openapi-url="openapi.json"' in response.text


@pytest.mark.parametrize("page", PAGES)
def test_page_has_no_inline_script(client: TestClient, page: str) -> None:
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", client.get(page).text, flags=re.S)
    assert scripts
    assert all('src="' in attributes and not body.strip() for attributes, body in scripts)


@pytest.mark.parametrize("page", PAGES)
def test_page_has_a_content_security_policy(client: TestClient, page: str) -> None:
    headers = client.get(page).headers
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no inline scripts, no eval
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert headers["x-content-type-options"] == "nosniff"


def test_init_script_persists_authorization(client: TestClient) -> None:
    response = client.get("/docs/swagger-ui-init.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "persistAuthorization: true" in response.text
    assert "validatorUrl: null" in response.text  # no call to a public validator


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/docs/static/index.html", id="demo-page-of-the-package"),
        pytest.param("/docs/static/swagger-initializer.js", id="demo-initializer"),
        pytest.param("/docs/static/../__init__.py", id="traversal"),
        pytest.param("/docs/static/missing.js", id="missing"),
        pytest.param("/redoc/static/redoc.standalone.js.map", id="redoc-source-map"),
        pytest.param("/redoc/static/../../swagger-ui-dist/swagger-ui.css", id="redoc-traversal"),
    ],
)
def test_only_the_listed_assets_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


# A real browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(importlib.util.find_spec("playwright") is not None, "playwright (pip)")
    require(CHROMIUM.exists(), f"chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    database = tmp_path_factory.mktemp("docs") / "todo.db"
    server = start_uvicorn(server_env(f"sqlite:///{database}", RESET_DB="1"))
    try:
        server.wait_healthy()
        yield server.url
    finally:
        server.stop()


class _Watch:
    """What a page did that it should not: leave this origin, break its CSP, log an error."""

    def __init__(self, context: Any, base_url: str) -> None:
        self.base_url = base_url
        self.outside: list[str] = []
        self.errors: list[str] = []
        context.route("**/*", self._route)
        context.add_init_script(
            "window.__csp = [];"
            "document.addEventListener('securitypolicyviolation',"
            " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.base_url + "/"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def page(self, context: Any) -> Any:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._console)
        return page

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)


def _authorize(page: Any, email: str, password: str) -> None:
    page.click("button.authorize")
    page.fill("#oauth_username", email)
    page.fill("#oauth_password", password)
    page.click(".auth-btn-wrapper button.authorize")


def _try_me(page: Any) -> tuple[str, str]:
    operation = page.locator("#operations-auth-me")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()
    row = operation.locator(".live-responses-table tbody tr.response").first
    return row.locator(".response-col_status").inner_text().strip(), row.locator(".microlight").first.inner_text()


@pytest.mark.process
def test_swagger_ui_logs_in_and_calls_an_operation(browser: Any, base_url: str) -> None:
    context = browser.new_context()
    watch = _Watch(context, base_url)
    page = watch.page(context)
    page.goto(base_url + "/docs")
    page.wait_for_selector(".opblock")
    rendered = {page.locator(".opblock").nth(i).get_attribute("id") for i in range(page.locator(".opblock").count())}
    for operation_id in ("operations-auth-login", "operations-auth-me", "operations-todos-list_todos"):
        assert operation_id in rendered

    _authorize(page, *JOHN)
    page.locator(".auth-btn-wrapper button", has_text="Logout").wait_for()
    page.click(".auth-btn-wrapper button.btn-done")
    assert page.locator("button.authorize.locked").count() == 1

    status, body = _try_me(page)
    assert status == "200"
    assert '"email": "johndoe@example.com"' in body

    # persistAuthorization: opening the page again keeps the token.
    page.goto(base_url + "/docs")
    page.wait_for_selector(".opblock")
    assert page.locator("button.authorize.locked").count() == 1
    status, body = _try_me(page)
    assert (status, '"email": "johndoe@example.com"' in body) == ("200", True)

    assert page.evaluate("window.__csp") == []
    assert watch.outside == []
    assert watch.errors == []
    context.close()


@pytest.mark.process
def test_swagger_ui_shows_a_wrong_password(browser: Any, base_url: str) -> None:
    context = browser.new_context()
    watch = _Watch(context, base_url)
    page = watch.page(context)
    page.goto(base_url + "/docs")
    page.wait_for_selector(".opblock")

    _authorize(page, ALICE[0], "not her password")
    error = page.locator(".auth-container .errors")
    error.wait_for()
    assert "Unauthorized" in error.inner_text()
    assert page.locator(".auth-btn-wrapper button", has_text="Logout").count() == 0
    page.click(".auth-btn-wrapper button.btn-done")
    assert page.locator("button.authorize.locked").count() == 0

    status, _ = _try_me(page)
    assert status == "401"
    assert page.evaluate("window.__csp") == []
    assert watch.outside == []
    context.close()


# ReDoc 2.5 always asks for this image; the page's CSP blocks it and ReDoc leaves it out.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.process
def test_redoc_renders_every_operation(browser: Any, base_url: str) -> None:
    context = browser.new_context()
    watch = _Watch(context, base_url)
    page = watch.page(context)
    page.goto(base_url + "/redoc")
    page.wait_for_selector("[data-section-id^='tag/']")
    for operation in OPERATIONS:
        section = page.locator(f"[data-section-id='tag/{operation.tag}/operation/{operation.name}']")
        assert section.count() == 1, operation.name
        assert operation.summary in section.locator("h2").first.inner_text()
    rendered = page.locator("[data-section-id^='tag/'][data-section-id*='/operation/']").count()
    assert rendered == len(OPERATIONS)

    assert page.evaluate("window.__csp") == [f"img-src {REDOC_LOGO}"]
    assert watch.outside == []  # the blocked image never reached the network
    assert [error for error in watch.errors if REDOC_LOGO not in error] == []
    context.close()
