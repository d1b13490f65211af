"""Generated clients: the committed document compiles cleanly in the generators people use.

openapi-python-client (pinned in setup.cfg) and openapi-typescript with openapi-fetch (pinned
in tests/clients/package-lock.json) generate a client each from openapi/openapi.json, with
their default settings, into tests/clients/generated/ (ignored by git). Each is type-checked
strictly together with a scripted flow (tests/clients/flow.py, flow.mts), and the flow then
runs against a live server. Redocly CLI lints the document with its recommended ruleset.

The npm packages are installed with `npm ci` once per lock file, outside the repository
(ASGI_TODO_CACHE, default ~/.cache/asgi_todo), and linked as tests/clients/node_modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .helpers import require
from .servers import Server, server_env, start_uvicorn

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "openapi" / "openapi.json"
CLIENTS = ROOT / "tests" / "clients"
GENERATED = CLIENTS / "generated"
CACHE = Path(os.environ.get("ASGI_TODO_CACHE") or Path.home() / ".cache" / "asgi_todo")
TIMEOUT_SECONDS = 600
# Redocly CLI phones home unless told not to; these tests talk to loopback only.
QUIET_REDOCLY = {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"}


def _run(command: Sequence[object], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """Run a tool; its standard output, or a failure that shows all it wrote."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={**os.environ, **QUIET_REDOCLY, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, command))} exited with {result.returncode}:\n{output[-8000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def node_bin() -> Path:
    """The pinned npm packages' commands, installed once per lock file."""
    require(shutil.which("node") is not None and shutil.which("npm") is not None, "node and npm")
    manifest = [CLIENTS / "package.json", CLIENTS / "package-lock.json"]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in manifest)).hexdigest()[:16]
    installed = CACHE / f"clients-{digest}"
    if not (installed / "node_modules" / ".package-lock.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="clients-", dir=CACHE))
        for path in manifest:
            shutil.copy(path, staging)
        _run(["npm", "ci", "--no-audit", "--no-fund", "--cache", CACHE / "npm"], cwd=staging)
        try:
            staging.rename(installed)
        except OSError:  # another run installed the same lock file first
            shutil.rmtree(staging)
    link = CLIENTS / "node_modules"
    if link.is_symlink() or not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(installed / "node_modules", target_is_directory=True)
    return link / ".bin"


@pytest.fixture
def server(sqlite_url: str) -> Iterator[Server]:
    server = start_uvicorn(server_env(sqlite_url, RESET_DB="1", LOG_LEVEL="warning"))
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def _fresh(path: Path) -> Path:
    """A path to generate into, with nothing left from an earlier run."""
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.process
def test_redocly_recommended_lint_is_clean(node_bin: Path) -> None:
    """0 errors, 0 warnings; the two rules turned off say why in openapi/redocly.yaml."""
    config = ROOT / "openapi" / "redocly.yaml"
    output = _run([node_bin / "redocly", "lint", DOCUMENT, "--config", config, "--format", "json"])
    report = json.loads(output)
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}, report["problems"]


@pytest.mark.process
def test_python_client_type_checks_and_runs_the_flow(server: Server) -> None:
    generated = _fresh(GENERATED / "python")
    scripts = str(Path(sys.executable).parent)  # ruff, which the generator runs on its output
    path = {"PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    _run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", DOCUMENT, "--output-path", generated],
        env=path,
    )
    assert (generated / "asgi_todo_client" / "py.typed").exists()

    # Strict, with no configuration of ours: the generated package and the flow that uses it.
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-namespace-packages", "--config-file=", "--no-incremental"]
    output = _run([*mypy, "asgi_todo_client", CLIENTS / "flow.py"], cwd=generated)
    assert "Success: no issues found" in output, output

    flow = [sys.executable, "-W", "error", CLIENTS / "flow.py", server.url, "python-flow@example.com"]
    assert "python flow: ok" in _run(flow, env={"PYTHONPATH": str(generated)})


@pytest.mark.process
def test_typescript_client_type_checks_and_runs_the_flow(node_bin: Path, server: Server) -> None:
    _fresh(GENERATED / "js")
    schema = _fresh(GENERATED / "schema.d.ts")
    _run([node_bin / "openapi-typescript", DOCUMENT, "--output", schema])

    # tests/clients/tsconfig.json: strict, and the flow's one file, which imports the schema.
    _run([node_bin / "tsc", "--project", CLIENTS, "--noEmit", "--strict"])
    _run([node_bin / "tsc", "--project", CLIENTS])
    flow = GENERATED / "js" / "flow.mjs"
    assert "typescript flow: ok" in _run(["node", flow, server.url, "typescript-flow@example.com"])
