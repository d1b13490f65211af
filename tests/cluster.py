"""A cluster on one machine for test_cluster.py: application hosts in network namespaces on a
bridge, a PostgreSQL and a PgBouncer of the test's own, HAProxy in front, wrk as the load.

Every address is on the bridge (a /24 of 198.18.0.0/15, the range set aside for testing
network devices, that no interface of this machine uses yet) or on loopback. Everything
started here is registered with an ExitStack as it is made, so namespaces, the bridge,
processes and temporary directories go away even when a step fails.
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx2 as httpx

from .servers import START_SH, WRK_SCRIPT, free_port, server_env

PG_BIN = Path("/usr/lib/postgresql/15/bin")
APP_PORT = 8000
# HAProxy's health checks: every CHECK_INTER_MS, FALL failures take a host out; a host out is
# checked every DOWN_INTER_MS, and one success puts it back (a host's /readyz is ready again
# as soon as its database is: after a failover, every host was out, and each check waited
# for made the writes wait). DRAIN_SECONDS is well above FALL checks, so a stopping host is
# out of rotation before it stops listening.
CHECK_INTER_MS = 500
DOWN_INTER_MS = 250
FALL = 2
RISE = 1
CHECK_TIMEOUT_MS = 1500
DRAIN_SECONDS = 3


def host_env_defaults() -> dict[str, str]:
    """What every app host of a cluster test runs with; AppTier.host_env adds its database and
    the proxy it trusts."""
    return server_env(
        "postgresql://set-per-host",
        WEB_CONCURRENCY="1",
        DRAIN_SECONDS=str(DRAIN_SECONDS),
        GRACEFUL_TIMEOUT="10",
        ACCESS_LOG="off",
        DB_CONNECT_TIMEOUT="2",
    )


NO_HOST_READY = '{"detail":"Service unavailable: no host is ready"}'


def run(command: list[str], **kwargs: object) -> str:
    """A command that must succeed; its standard output."""
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    output: str = result.stdout
    return output


def wait_until(what: str, check: Callable[[], bool], *, timeout: float, step: float = 0.1) -> float:
    """Seconds until check() was true; AssertionError after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


def _free_subnet() -> ipaddress.IPv4Network:
    used = run(["ip", "-4", "route", "show", "table", "all"])
    for third in random.sample(range(1, 255), 254):
        for base in ("198.18", "198.19"):
            network = ipaddress.IPv4Network(f"{base}.{third}.0/24")
            if str(network.network_address)[:-1] not in used:
                return network
    raise AssertionError("no free /24 in 198.18.0.0/15")


STARTED: list[Process] = []


class Process:
    """A process in its own session, so that it and its children go together. Every one
    started is in `STARTED`, so a test can check that none is left."""

    def __init__(self, name: str, command: list[str], *, env: Mapping[str, str], log: Path, **kwargs: object) -> None:
        STARTED.append(self)
        self.name = name
        self.log = log
        with log.open("ab") as sink:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                command, env=dict(env), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """`sig`, wait, then SIGKILL what is left of its group. The exit code."""
        if self.alive:
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.signal_group(signal.SIGKILL)
        return self.popen.wait(10)


@dataclass
class Network:
    """A bridge in this namespace, and hosts in namespaces of their own hanging off it."""

    stack: contextlib.ExitStack
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        self.bridge = f"atb{self.tag}"
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.stack.callback(run, ["ip", "link", "del", self.bridge])
        run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    @property
    def gateway(self) -> str:
        """This namespace's address on the bridge: PostgreSQL and PgBouncer listen there."""
        return str(self.subnet.network_address + 1)

    def add_host(self, index: int) -> tuple[str, str]:
        """A namespace with its own address; (namespace, address)."""
        namespace, address = f"at{self.tag}h{index}", str(self.subnet.network_address + 10 + index)
        outside, inside = f"atv{self.tag}{index}", self._inside(index)
        run(["ip", "netns", "add", namespace])
        self.stack.callback(self._remove_namespace, namespace, outside)
        run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside])
        run(["ip", "link", "set", inside, "netns", namespace])
        run(["ip", "link", "set", outside, "master", self.bridge, "up"])
        inns = ["ip", "netns", "exec", namespace]
        run([*inns, "ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", inside])
        run([*inns, "ip", "link", "set", inside, "up"])
        run([*inns, "ip", "link", "set", "lo", "up"])
        return namespace, address

    def _inside(self, index: int) -> str:
        return f"atn{self.tag}{index}"

    def set_link(self, namespace: str, index: int, *, up: bool) -> None:
        """The host's link, in its own namespace: down, the host is cut off from every other."""
        run(["ip", "netns", "exec", namespace, "ip", "link", "set", self._inside(index), "up" if up else "down"])

    @staticmethod
    def _remove_namespace(namespace: str, outside: str) -> None:
        # Anything still running in it was started by this test.
        for pid in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        # Sockets its processes left behind that still try to send (after a network cut, with
        # long retransmission timers) keep the namespace, and so its link, alive for minutes.
        subprocess.run(["ip", "netns", "exec", namespace, "ss", "-K"], capture_output=True, check=False)
        # The pair goes with our end, at once; left to the namespace's deletion, it goes only when
        # the kernel gets round to freeing the namespace, after the test has looked for it.
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        run(["ip", "netns", "del", namespace])


def postgres_owned_dir(stack: contextlib.ExitStack, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    shutil.chown(path, "postgres", "postgres")
    return path


class Postgres:
    """A PostgreSQL 15 of the test's own (initdb into a temporary directory), on its own port,
    listening on loopback and on the bridge, run as the postgres user (it refuses root)."""

    def __init__(self, stack: contextlib.ExitStack, *, listen: str) -> None:
        self.dir = postgres_owned_dir(stack, "asgi_todo-cluster-pg-")
        self.data = self.dir / "data"
        self.port = free_port()
        self.listen = listen
        self.log = self.dir / "postgres.log"
        self.process: Process | None = None
        run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            user="postgres", cwd=self.dir)  # fmt: skip
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {listen}/16 trust\n")
        stack.callback(self.stop)
        self.start()
        run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE app"])

    def url(self, host: str | None = None, port: int | None = None) -> str:
        return f"postgresql://postgres@{host or self.listen}:{port or self.port}/app"

    def start(self) -> None:
        command = [
            str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
            "-c", f"listen_addresses=127.0.0.1,{self.listen}", "-c", "max_connections=200",
        ]  # fmt: skip
        self.process = Process("postgres", command, env=os.environ, log=self.log, user="postgres", cwd=self.dir)
        wait_until("PostgreSQL accepts connections", self.ready, timeout=30)

    def ready(self) -> bool:
        command = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        return subprocess.run(command, check=False).returncode == 0

    def crash(self) -> None:
        """An outage: stop at once, without a checkpoint (what a crash leaves; WAL replay
        on the next start must bring back every committed transaction)."""
        run([str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate"], user="postgres", cwd=self.dir)
        assert self.process is not None
        self.process.popen.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def scalar(self, sql: str) -> str:
        return run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "app", "-tAc", sql]
        ).strip()


class PgBouncer:
    """PgBouncer in transaction pooling mode in front of `postgres`, with fewer server
    connections than the hosts' pools hold, handed out in turn (`server_round_robin`), so
    consecutive transactions of one client land on different server connections."""

    def __init__(self, stack: contextlib.ExitStack, postgres: Postgres, *, listen: str, pool_size: int = 4) -> None:
        self.dir = postgres_owned_dir(stack, "asgi_todo-cluster-pgbouncer-")
        self.port = free_port()
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        config = self.dir / "pgbouncer.ini"
        config.write_text(
            f"[databases]\napp = host=127.0.0.1 port={postgres.port} dbname=app user=postgres\n"
            f"[pgbouncer]\nlisten_addr = {listen}\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\npool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmin_pool_size = {pool_size}\nserver_round_robin = 1\n"
            "max_client_conn = 500\nserver_reset_query =\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        self.process = Process("pgbouncer", ["pgbouncer", str(config)], env=os.environ,
                               log=self.dir / "stdout.log", user="postgres", cwd=self.dir)  # fmt: skip
        stack.callback(self.process.stop)
        wait_until("PgBouncer listens", lambda: _connects(listen, self.port), timeout=15)

    def output(self) -> str:
        return (self.dir / "pgbouncer.log").read_text(errors="replace")


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


class Host:
    """One application host: start.sh (gunicorn, one uvicorn worker) in its namespace."""

    def __init__(self, name: str, namespace: str, address: str, *, logs: Path) -> None:
        self.name, self.namespace, self.address = name, namespace, address
        self.log = logs / f"{name}.log"
        self.cwd = tempfile.mkdtemp(prefix=f"asgi_todo-cluster-{name}-", dir=logs)
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{APP_PORT}"

    def start(self, env: Mapping[str, str]) -> None:
        bin_dir = str(Path(sys.executable).parent)
        env = {**env, "BIND": f"{self.address}:{APP_PORT}", "PATH": f"{bin_dir}{os.pathsep}{os.defpath}"}
        command = ["ip", "netns", "exec", self.namespace, str(START_SH)]
        self.process = Process(self.name, command, env=env, log=self.log, cwd=self.cwd)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def terminate(self) -> int:
        """SIGTERM to the gunicorn master, as a platform sends it; the exit code."""
        assert self.process is not None
        self.process.popen.send_signal(signal.SIGTERM)
        return self.process.popen.wait(DRAIN_SECONDS + 30)

    def kill(self) -> None:
        """SIGKILL to every process of the host at once: the host is gone."""
        assert self.process is not None
        self.process.signal_group(signal.SIGKILL)
        self.process.popen.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class Balancer:
    """An HAProxy of the test's own: `sections` after a common `global` one; the state of
    proxy `proxy`'s servers through its admin socket."""

    def __init__(
        self, stack: contextlib.ExitStack, name: str, sections: str, *, proxy: str, listen: str, port: int, logs: Path
    ) -> None:
        self.port, self.proxy = port, proxy
        self.socket = logs / f"{name}.sock"
        config = logs / f"{name}.cfg"
        config.write_text(
            "global\n"
            f"    stats socket {self.socket} mode 600 level admin\n"
            "    maxconn 2000\n"
            "    log stdout format raw local0\n"
            f"{sections}"
        )
        run(["haproxy", "-c", "-f", str(config)])
        self.process = Process(name, ["haproxy", "-db", "-f", str(config)], env=os.environ, log=logs / f"{name}.log")
        stack.callback(self.process.stop)
        wait_until(f"{name} listens", lambda: _connects(listen, port), timeout=15)

    def stats(self) -> dict[str, dict[str, str]]:
        """Each server's row of HAProxy's statistics (`status`, `scur`, `stot`, ...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == self.proxy and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it: "UP", "DOWN", "UP 1/2", ..."""
        return {name: row["status"] for name, row in self.stats().items()}


class HAProxy(Balancer):
    """HAProxy on loopback, round robin over the hosts, health-checking `/readyz`."""

    def __init__(self, stack: contextlib.ExitStack, hosts: list[Host], *, logs: Path) -> None:
        port = free_port()
        servers = "".join(f"    server {host.name} {host.address}:{APP_PORT} check\n" for host in hosts)
        sections = (
            "defaults\n"
            "    mode http\n"
            # One line for each request that failed or was retried, none for the others.
            "    log global\n    option httplog\n    option dontlog-normal\n"
            "    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n"
            f"    timeout check {CHECK_TIMEOUT_MS}ms\n"
            # HAProxy's defaults: a refused connection is retried on the same host, never sent
            # to another one (no `option redispatch`), so a host that stops listening while
            # still in rotation fails requests: the drain is what keeps them from it.
            "    retries 3\n"
            # With no host ready (the database away, a failover), HAProxy's own answer is the
            # app's: a JSON 503 with Retry-After, so a client retries it the same way.
            f"    http-error status 503 content-type application/json string '{NO_HOST_READY}' hdr Retry-After 5\n"
            "frontend web\n"
            f"    bind 127.0.0.1:{port}\n"
            # The client's address for the hosts' per-client limits, written afresh (the
            # hosts trust HAProxy's address only: Cluster.host_env).
            "    http-request del-header X-Forwarded-For\n"
            "    option forwardfor\n"
            "    default_backend app\n"
            "backend app\n"
            "    balance roundrobin\n"
            "    option httpchk GET /readyz\n"
            "    http-check expect status 200\n"
            # Besides the checks, a connection to a host that fails under real traffic takes it
            # out at once.
            f"    default-server inter {CHECK_INTER_MS}ms downinter {DOWN_INTER_MS}ms fall {FALL} rise {RISE}"
            " observe layer4 error-limit 1 on-error mark-down\n"
            f"{servers}"
        )
        super().__init__(stack, "haproxy", sections, proxy="app", listen="127.0.0.1", port=port, logs=logs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class WrkResult:
    requests: int
    non2xx: int
    created: int
    statuses: str
    connect: int
    read: int
    write: int
    timeout: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    seconds: float

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx: error answers and broken connections."""
        return self.non2xx + self.connect + self.read + self.write + self.timeout

    def summary(self) -> str:
        statuses = " ".join(sorted(set(self.statuses.split())))
        return (
            f"{self.requests} requests in {self.seconds:.1f} s, {self.failed} failed "
            f"(non-2xx {self.non2xx} [{statuses}], connect {self.connect}, read {self.read}, "
            f"write {self.write}, timeout {self.timeout}), {self.created} created, p99 {self.p99_ms:.0f} ms"
        )


class Wrk:
    """`wrk` with tests/wrk_mixed.lua through the balancer until stopped (SIGINT: wrk then
    prints its summary)."""

    def __init__(self, url: str, *, token: str, todo_id: int, tag: str, connections: int, logs: Path) -> None:
        self.connections = connections
        env = {**os.environ, "WRK_TOKEN": token, "WRK_TODO_ID": str(todo_id), "WRK_TAG": tag}
        command = ["wrk", "-t2", f"-c{connections}", "-d300s", "--timeout", "10s", "-s", str(WRK_SCRIPT), url]
        self.process = Process("wrk", command, env=env, log=logs / f"wrk-{tag}.log")

    def stop(self) -> WrkResult:
        self.process.popen.send_signal(signal.SIGINT)
        self.process.popen.wait(30)
        for line in self.process.output().splitlines():
            if line.startswith("WRK_RESULT "):
                return WrkResult(**json.loads(line.removeprefix("WRK_RESULT ")))
        raise AssertionError(f"wrk printed no result:\n{self.process.output()[-3000:]}")


class AppTier:
    """The application side of a cluster: the network, the hosts, HAProxy in front. What
    the hosts use as their database is the subclass's (`database_url`)."""

    def __init__(self, stack: contextlib.ExitStack, *, hosts: int, env: Mapping[str, str]) -> None:
        self.stack = stack
        self.logs = Path(tempfile.mkdtemp(prefix="asgi_todo-cluster-"))
        stack.callback(shutil.rmtree, self.logs, ignore_errors=True)
        self.network = Network(stack)
        self.env = dict(env)
        self.hosts: list[Host] = []
        for index in range(1, hosts + 1):
            namespace, address = self.network.add_host(index)
            host = Host(f"h{index}", namespace, address, logs=self.logs)
            stack.callback(host.stop)
            self.hosts.append(host)
        self.haproxy = HAProxy(stack, self.hosts, logs=self.logs)

    def database_url(self) -> str:
        raise NotImplementedError

    def host_env(self, **extra: str) -> dict[str, str]:
        # HAProxy reaches the hosts from this namespace's address on the bridge: the one proxy
        # whose X-Forwarded-For they believe.
        trusted = {"FORWARDED_ALLOW_IPS": self.network.gateway}
        return {**self.env, "DATABASE_URL": self.database_url(), **trusted, **extra}

    def start_host(self, host: Host, env: Mapping[str, str]) -> None:
        self.start_hosts([host], env)

    def start_hosts(self, hosts: list[Host], env: Mapping[str, str]) -> None:
        """Started all at once; returns once every one is ready and in rotation."""
        for host in hosts:
            host.start(env)
        for host in hosts:
            wait_until(f"{host.name} ready", host.ready, timeout=60, step=0.2)
            wait_until(f"{host.name} UP in HAProxy", partial(self.in_rotation, host), timeout=30)

    def in_rotation(self, host: Host) -> bool:
        return self.haproxy.states()[host.name] == "UP"

    def wait_states(self, wanted: str, *, timeout: float) -> float:
        """Seconds until HAProxy sees every host in state `wanted` ("UP" or "DOWN")."""
        return wait_until(
            f"every host {wanted}",
            lambda: set(self.haproxy.states().values()) == {wanted},
            timeout=timeout,
            step=0.05,
        )

    def diagnostics(self) -> str:
        return "\n".join(
            f"--- {host.name}\n{host.log.read_text(errors='replace')[-3000:]}"
            for host in self.hosts
            if host.log.exists()
        )


class Cluster(AppTier):
    """The whole: network, PostgreSQL, the hosts, HAProxy; PgBouncer on demand."""

    def __init__(self, stack: contextlib.ExitStack, *, hosts: int, env: Mapping[str, str]) -> None:
        super().__init__(stack, hosts=hosts, env=env)
        self.postgres = Postgres(stack, listen=self.network.gateway)
        self.pgbouncer: PgBouncer | None = None

    def database_url(self) -> str:
        return self.postgres.url()

    def with_pgbouncer(self) -> PgBouncer:
        if self.pgbouncer is None:
            self.pgbouncer = PgBouncer(self.stack, self.postgres, listen=self.network.gateway)
        return self.pgbouncer

    def load(self, *, token: str, todo_id: int, tag: str, connections: int = 12) -> Wrk:
        wrk = Wrk(self.haproxy.url, token=token, todo_id=todo_id, tag=tag, connections=connections, logs=self.logs)
        self.stack.callback(wrk.process.stop, signal.SIGINT)
        return wrk

    def stored(self, tag: str) -> int:
        """Todos the load created with this tag, as the database holds them."""
        return int(self.postgres.scalar(f"SELECT count(*) FROM todos WHERE text LIKE '{tag} %'"))  # noqa: S608

    def diagnostics(self) -> str:
        parts = [super().diagnostics(), f"--- postgres\n{self.postgres.log.read_text(errors='replace')[-2000:]}"]
        if self.pgbouncer is not None:
            parts.append(f"--- pgbouncer\n{self.pgbouncer.output()[-2000:]}")
        return "\n".join(parts)
