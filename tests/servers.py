"""Real servers on loopback for process tests: start, wait until healthy, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

from .conftest import SECRET_KEY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a server under test: our settings only, cheap bcrypt."""
    ours = ("ASGI_TODO_", "RESET_DB", "UPDATE_DB", "API_PREFIX", "SQLALCHEMY_DATABASE_URI")
    env = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET_KEY,
        BCRYPT_ROUNDS="4",
        LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not healthy after {timeout}s:\n{self.output()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start(command: Sequence[str], env: Mapping[str, str], *, port: int, cwd: str | None = None) -> Server:
    log = Path(tempfile.mkstemp(prefix="asgi_todo-server-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=dict(env), stdout=sink, stderr=subprocess.STDOUT, cwd=cwd)
    return Server(process, port, log)


def start_uvicorn(env: Mapping[str, str], *, workers: int = 1, port: int | None = None) -> Server:
    port = port or free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "asgi_todo.app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--workers", str(workers),
    ]  # fmt: skip
    return start(command, env, port=port)


def stop_all(servers: Sequence[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers:
        server.stop()
