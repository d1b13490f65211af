"""The image, built from this repository's Dockerfile and run with podman, and compose.yaml's
app and PostgreSQL run with podman-compose (docs: Deployment, "The image test").

No registry is reachable here: tests/containers.py makes the bases that the Dockerfile and
compose.yaml name, once, and keeps them in podman's storage. `pytest -m container` runs these
alone; they need root, podman, runc, podman-compose and debootstrap (`.ci/run` installs them).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from .containers import (
    APP_IMAGE,
    BUILD_CA,
    POSTGRES_BASE,
    PYTHON_BASE,
    Podman,
    containers_conf,
    podman_env,
)
from .deployfiles import ROOT, deployment_pod, image_user, writable_paths
from .helpers import ALICE, SECRET_KEY, TOKEN_URL, require
from .servers import free_port

pytestmark = pytest.mark.container

TOOLS = ("podman", "runc", "podman-compose", "debootstrap")
GRACE = 20  # seconds: the run's GRACEFUL_TIMEOUT, and how long `podman stop` waits before SIGKILL
COMPILER = re.compile(r"(cc|c\+\+|cc1|gcc|g\+\+|clang|.+-gcc|.+-g\+\+)(-[0-9.]+)?")


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    require(os.geteuid() == 0 and all(shutil.which(tool) for tool in TOOLS), f"root with {', '.join(TOOLS)}")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(containers_conf())
    return Podman(podman_env(conf))


@pytest.fixture(scope="session")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    if podman.ensure_base(PYTHON_BASE, tmp_path_factory.mktemp("base")):
        podman.run("image", "prune", "--force")  # the layer cache of the base replaced
    podman.build_app()
    return APP_IMAGE


def run_app(podman: Podman, image: str, *, port: int, name: str) -> None:
    """The image as the Kubernetes Deployment runs it: its own user, a read-only root with the
    Deployment's writable paths; SQLite on a volume at the image's data directory; the host's
    network."""
    podman.run(
        "run", "--detach", "--name", name, "--network=host", "--read-only", "--read-only-tmpfs=false",
        *[argument for path in writable_paths(deployment_pod()) for argument in ("--tmpfs", f"{path}:rw,mode=1777")],
        "--volume", "/app/data",
        "--env", f"PORT={port}", "--env", f"SECRET_KEY={SECRET_KEY}", "--env", "RESET_DB=1",
        "--env", "BCRYPT_ROUNDS=4", "--env", "WEB_CONCURRENCY=2", "--env", f"GRACEFUL_TIMEOUT={GRACE - 5}",
        image,
    )  # fmt: skip


@pytest.fixture
def app(podman: Podman, image: str) -> Iterator[tuple[str, str]]:
    """(container name, URL) of the image running, healthy."""
    name, port = f"asgi_todo_test_{uuid.uuid4().hex[:8]}", free_port()
    run_app(podman, image, port=port, name=name)
    try:
        podman.wait_healthy(name)
        yield name, f"http://127.0.0.1:{port}"
    finally:
        podman.run("rm", "--force", "--volumes", "--time", "0", name, check=False)


def test_the_image_serves_health_a_login_and_me(app: tuple[str, str]) -> None:
    _, url = app
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["database"] == "ok"
    token = httpx.post(url + TOKEN_URL, data={"username": ALICE[0], "password": ALICE[1]}, timeout=10)
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = httpx.get(f"{url}/api/auth/me", headers=headers, timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == ALICE[0]
    created = httpx.post(f"{url}/api/todos/", json={"text": "written in the container"}, headers=headers, timeout=10)
    assert created.status_code == 201, created.text


def test_its_health_check_is_healthy(podman: Podman, app: tuple[str, str]) -> None:
    name, _ = app
    assert podman.run("healthcheck", "run", name, check=False).returncode == 0
    assert podman.run("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() == "healthy"


def test_every_process_runs_as_the_image_user(podman: Podman, app: tuple[str, str]) -> None:
    name, _ = app
    uid = image_user().split(":")[0]
    assert uid == "10001"
    rows = [line.split(None, 2) for line in podman.run("top", name, "huser", "pid", "args").stdout.splitlines()[1:]]
    assert len(rows) >= 3, rows  # the gunicorn master and its two workers
    assert {user for user, _, _ in rows} == {uid}, rows


def test_sigterm_stops_it_with_exit_code_0_within_the_grace_period(podman: Podman, image: str) -> None:
    """`podman stop` sends SIGTERM, and SIGKILL (exit code 137) if the grace period runs out."""
    name, port = f"asgi_todo_test_{uuid.uuid4().hex[:8]}", free_port()
    run_app(podman, image, port=port, name=name)
    try:
        podman.wait_healthy(name)
        podman.run("stop", "--time", str(GRACE), name, timeout=GRACE + 30)
        state = podman.run("inspect", "--format", "{{.State.ExitCode}} {{.State.Status}}", name).stdout.split()
        assert state == ["0", "exited"], podman.run("logs", name).stderr[-3000:]
    finally:
        podman.run("rm", "--force", "--volumes", "--time", "0", name, check=False)


def test_the_image_holds_no_compiler_no_tests_no_git_no_build_ca(podman: Podman, image: str) -> None:
    ours = {path.name for path in (ROOT / "tests").rglob("test_*.py")}
    root = Path(podman.run("image", "mount", image).stdout.strip())
    base = Path(podman.run("image", "mount", PYTHON_BASE.name).stdout.strip())
    try:
        found = [path for path in root.rglob("*") if not path.is_symlink() or path.exists()]
        names = {path.name for path in found}
        assert not [path for path in found if COMPILER.fullmatch(path.name) and path.is_file()], "a compiler"
        assert ".git" not in names
        assert not names & ours, f"test files: {sorted(names & ours)}"
        assert not list(root.glob("opt/venv/lib/python*/site-packages/tests")), "the tests package"
        assert not (root / "src").exists(), "the build stage's sources"
        assert sorted(path.name for path in (root / "app").iterdir()) == ["data", "start.sh"]
        ca = BUILD_CA.lstrip("/")
        assert (root / ca).read_bytes() == (base / ca).read_bytes(), "the machine's CA bundle is in the image"
    finally:
        podman.run("image", "unmount", image, PYTHON_BASE.name, check=False)


# compose.yaml


@dataclass(frozen=True)
class Compose:
    """podman-compose on a copy of compose.yaml with a .env of its own."""

    podman: Podman
    directory: Path
    project: str
    url: str

    def __call__(self, *args: str) -> None:
        command = ["podman-compose", "--project-name", self.project, "--file", str(self.directory / "compose.yaml")]
        done = subprocess.run([*command, *args], env=self.podman.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"

    def up(self) -> None:
        """PostgreSQL until its health check passes, then the app (podman-compose does not wait
        for `condition: service_healthy` itself), until it answers."""
        self("up", "--detach", "--no-build", "db")
        self.podman.wait_healthy(f"{self.project}_db_1")
        self("up", "--detach", "--no-build")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        logs = self.podman.run("logs", f"{self.project}_app_1", check=False)
        raise AssertionError(f"the app did not answer:\n{(logs.stdout + logs.stderr)[-4000:]}")


@pytest.fixture
def compose(podman: Podman, image: str, tmp_path: Path) -> Iterator[Compose]:
    """compose.yaml as it is, in a project directory of its own; everything it made, volume
    included, is removed afterwards."""
    podman.ensure_base(POSTGRES_BASE, tmp_path / "base")
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    init_script = Path("deploy", "compose", "initdb-app-role.sh")  # mounted into the db service
    (tmp_path / init_script.parent).mkdir(parents=True)
    shutil.copy2(ROOT / init_script, tmp_path / init_script)
    port = free_port()
    third = random.randrange(0, 256)  # a subnet of its own: one left behind by a failed run does not collide
    (tmp_path / ".env").write_text(
        f"SECRET_KEY={SECRET_KEY}\nPOSTGRES_PASSWORD={secrets.token_urlsafe(16)}\nAPP_PORT={port}\n"
        f"APP_DB_PASSWORD={secrets.token_urlsafe(16)}\nAPP_SUBNET=172.31.{third}.0/24\nAPP_GATEWAY=172.31.{third}.1\n"
        "UPDATE_DB=1\nBCRYPT_ROUNDS=4\nWEB_CONCURRENCY=1\n"
    )
    project = Compose(podman, tmp_path, f"asgi_todo_test_{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:{port}")
    try:
        yield project
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            project("down", "--volumes")
        podman.run("volume", "rm", "--force", f"{project.project}_pgdata", check=False)
        podman.run("network", "rm", "--force", f"{project.project}_default", check=False)


def test_compose_runs_the_app_on_postgres_and_the_data_survives_a_restart(podman: Podman, compose: Compose) -> None:
    url = compose.url
    compose.up()
    # A read-only app without capabilities, connected as a role of its own that is no
    # superuser and owns the tables (docs: Deployment, docker compose).
    app = f"{compose.project}_app_1"
    status = podman.run("exec", app, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert int(fields["CapBnd"].strip(), 16) == 0, fields["CapBnd"]  # not even a capability to gain
    assert fields["NoNewPrivs"].strip() == "1"
    mounts = {
        parts[1]: (parts[2], parts[3].split(","))
        for parts in (line.split() for line in podman.run("exec", app, "cat", "/proc/mounts").stdout.splitlines())
    }
    assert "ro" in mounts["/"][1]
    assert mounts["/tmp"][0] == "tmpfs"
    assert "rw" in mounts["/tmp"][1]
    psql = ["exec", f"{compose.project}_db_1", "psql", "-U", "asgi_todo", "-d", "asgi_todo", "-tAc"]
    owners = podman.run(*psql, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").stdout.split()
    assert owners == ["asgi_todo_app"]
    assert podman.run(*psql, "SELECT rolsuper FROM pg_roles WHERE rolname = 'asgi_todo_app'").stdout.strip() == "f"
    account = {"email": "compose@example.com", "password": "compose-password"}
    assert httpx.post(f"{url}/api/users/signup", json=account, timeout=10).status_code == 201
    token = httpx.post(url + TOKEN_URL, data={"username": account["email"], "password": account["password"]})
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    created = httpx.post(f"{url}/api/todos/", json={"text": "kept in pgdata"}, headers=headers, timeout=10)
    assert created.status_code == 201, created.text

    compose("down")  # the containers go, the named volume stays
    assert podman.run("ps", "--all", "--filter", f"name={compose.project}", "--quiet").stdout.strip() == ""
    compose.up()

    token = httpx.post(url + TOKEN_URL, data={"username": account["email"], "password": account["password"]})
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    todos = httpx.get(f"{url}/api/todos/", headers=headers, timeout=10)
    assert [todo["text"] for todo in todos.json()] == ["kept in pgdata"]
