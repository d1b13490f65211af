"""schemathesis against a live server: the document is true of the running app.

The same command as the docs' (API, "Schemathesis"), with openapi/schemathesis.toml (all checks and phases,
stateful links, bounded examples): a 500, an undocumented status or header, a response
that contradicts its schema, or an invalid request accepted fails this test.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from asgi_todo.api import OPERATIONS

from .helpers import JOHN, require
from .servers import Server, server_env, start_uvicorn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "openapi" / "schemathesis.toml"
TIMEOUT_SECONDS = 600


@pytest.fixture
def server(sqlite_url: str) -> Iterator[Server]:
    # Every generated sign-up is a valid one: no per-address limit (429) for this one client.
    env = server_env(sqlite_url, RESET_DB="1", LOG_LEVEL="warning", SIGNUP_MAX_PER_CLIENT="100000")
    server = start_uvicorn(env)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def schemathesis_command(base_url: str, token: str) -> list[str]:
    return [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
        "run", f"{base_url}/openapi.json", "--header", f"Authorization: Bearer {token}", "--no-color",
    ]  # fmt: skip


@pytest.mark.process
def test_schemathesis_finds_nothing(server: Server) -> None:
    require(importlib.util.find_spec("schemathesis") is not None, "schemathesis (pip)")
    email, password = JOHN
    response = httpx.post(f"{server.url}/api/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    command = schemathesis_command(server.url, response.json()["access_token"])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20_000:]
    tested = re.search(r"Tested:\s+(\d+)", output)
    assert tested is not None, output[-5_000:]
    skipped = {"delete_me"}  # see the config
    assert int(tested.group(1)) == len([op for op in OPERATIONS if op.name not in skipped]), output[-5_000:]
