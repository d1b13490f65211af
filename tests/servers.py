"""Real servers on loopback for process tests: start, wait until healthy, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

from .helpers import SECRET_KEY

START_SH = Path(__file__).resolve().parent.parent / "start.sh"
WRK_SCRIPT = Path(__file__).with_name("wrk_mixed.lua")  # wrk's mixed read/write load


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


APP_FACTORY = "asgi_todo.app:create_app"


def start_uvicorn(
    env: Mapping[str, str],
    *,
    workers: int = 1,
    port: int | None = None,
    factory: str = APP_FACTORY,
    options: Sequence[str] = (),
) -> Server:
    port = port or free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--workers", str(workers), *options,
    ]  # fmt: skip
    return start(command, env, port=port)


def start_gunicorn_factory(
    env: Mapping[str, str],
    *,
    factory: str,
    workers: int = 2,
    port: int | None = None,
    options: Sequence[str] = (),
) -> Server:
    """Plain gunicorn with uvicorn workers around any app factory, the same command line for
    every app (the benchmark's); `start_gunicorn` runs asgi_todo's own entry point instead."""
    port = port or free_port()
    command = [
        sys.executable, "-m", "gunicorn", f"{factory}()", "--worker-class", "uvicorn_worker.UvicornWorker",
        "--workers", str(workers), "--bind", f"127.0.0.1:{port}", *options,
    ]  # fmt: skip
    return start(command, env, port=port)


def start_serve(env: Mapping[str, str], *, port: int | None = None) -> Server:
    """`asgi-todo serve`: one uvicorn process, on loopback."""
    port = port or free_port()
    command = [sys.executable, "-m", "asgi_todo", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return start(command, env, port=port)


def start_script(env: Mapping[str, str], *, port: int | None = None, args: Sequence[str] = ()) -> Server:
    """start.sh, the container's entry point, in an empty working directory (no `.env`, no
    prestart script unless env names one), with this interpreter's scripts on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"}
    cwd = tempfile.mkdtemp(prefix="asgi_todo-cwd-")
    return start([str(START_SH), *args], env, port=port or free_port(), cwd=cwd)


def start_gunicorn(env: Mapping[str, str], *, workers: int = 2, port: int | None = None) -> Server:
    """gunicorn with uvicorn workers, through start.sh, on loopback."""
    port = port or free_port()
    return start_script({"WEB_CONCURRENCY": str(workers), "BIND": f"127.0.0.1:{port}", **env}, port=port)


def children(pid: int) -> set[int]:
    """The live worker processes of a server (a gunicorn master's, or uvicorn --workers')."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(child) for child in found if _is_worker(int(child))}


def _is_worker(pid: int) -> bool:
    """Alive (not a zombie waiting to be reaped), and not multiprocessing's resource tracker."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_for_workers(server: Server, count: int, *, without: Set[int] = frozenset(), timeout: float = 30) -> set[int]:
    """The master's worker pids once exactly `count` are up, none of them in `without`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = children(server.process.pid)
        if len(workers) == count and not workers & without:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not come up:\n{server.output()[-3000:]}")


def rss_kib(pid: int, *, peak: bool = False) -> int:
    """Resident memory now, or (peak) the most it has been (VmHWM)."""
    field = "VmHWM:" if peak else "VmRSS:"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def stop_all(servers: Sequence[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers:
        server.stop()


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length from a connection that stays open."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received[:200]!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received[:200]!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def serving_worker(sock: socket.socket, workers: Set[int]) -> int:
    """Which of these processes holds the server's end of a connection (IPv4) that has had
    an answer, found by the socket's inode in /proc."""
    client, server = sock.getsockname()[1], sock.getpeername()[1]
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.rpartition(":")[2], 16) for address in fields[1:3])
        if (local, remote) == (server, client):
            inode = fields[9]
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                pass
    raise AssertionError(f"no worker of {sorted(workers)} holds the connection from port {client}")
