"""A PostgreSQL that survives losing its primary, for test_failover.py: three database hosts
in network namespaces of tests/cluster.py's kind, each an etcd member and a Patroni running
PostgreSQL 15, with synchronous replication; an HAProxy in TCP mode sends the application
hosts to whichever answers Patroni's `GET /primary` (docs/high-availability.md shows the same
stanza for a deployment).

Patroni's timings are shortened so that a test of three faults fits the suite's budget:
a primary that stops renewing its leader key loses it after TTL seconds, and every member
looks at the cluster every LOOP_WAIT seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import httpx2 as httpx

from .cluster import PG_BIN, AppTier, Balancer, Process, postgres_owned_dir, run, wait_until
from .servers import free_port

PG_PORT = 5432
REST_PORT = 8008
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
# Patroni's rule: loop_wait + 2 * retry_timeout <= ttl.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 7, 1, 3
# The database balancer's checks of `GET /primary`: every CHECK_MS while a server's state
# holds, every FAST_CHECK_MS while it changes or is down; FALL failures take a server out.
CHECK_MS, FAST_CHECK_MS, FALL = 1000, 250, 2


class Member:
    """One database host: its namespace, an etcd member, and Patroni with its PostgreSQL."""

    def __init__(self, stack: contextlib.ExitStack, name: str, index: int, namespace: str, address: str) -> None:
        self.name, self.index, self.namespace, self.address = name, index, namespace, address
        self.dir = postgres_owned_dir(stack, f"asgi_todo-patroni-{name}-")
        self.etcd: Process | None = None
        self.patroni: Process | None = None
        stack.callback(self.stop)

    @property
    def rest(self) -> str:
        return f"http://{self.address}:{REST_PORT}"

    def _in_namespace(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *command]

    def start_etcd(self, members: list[Member], token: str) -> None:
        peers = ",".join(f"{member.name}=http://{member.address}:{ETCD_PEER_PORT}" for member in members)
        command = self._in_namespace(
            "etcd", "--name", self.name, "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://{self.address}:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", f"http://{self.address}:{ETCD_CLIENT_PORT}",
            "--listen-peer-urls", f"http://{self.address}:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://{self.address}:{ETCD_PEER_PORT}",
            "--initial-cluster", peers, "--initial-cluster-token", token, "--initial-cluster-state", "new",
            # etcd's defaults, said here because they count: a lost etcd leader is replaced
            # within one to two election timeouts, and Patroni waits out its retry_timeout.
            "--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", "warn",
            # A member back from a partition asks before it calls an election instead of
            # deposing the leader with its higher term (etcd 3.5's default). Patroni talks to
            # etcd through its v2 API (see patroni_config).
            "--pre-vote=true", "--enable-v2=true",
        )  # fmt: skip
        self.etcd = Process(f"etcd-{self.name}", command, env=os.environ, log=self.dir / "etcd.log")

    def etcd_healthy(self) -> bool:
        try:
            answer = httpx.get(f"http://{self.address}:{ETCD_CLIENT_PORT}/health", timeout=2)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json().get("health") == "true"

    def write_config(self, config: Mapping[str, object]) -> Path:
        # YAML is a superset of JSON: Patroni reads this as it is.
        path = self.dir / "patroni.yml"
        path.write_text(json.dumps(config, indent=1))
        return path

    def start_patroni(self, config: Path) -> None:
        """Patroni as the postgres user (PostgreSQL refuses root), in the host's namespace."""
        setpriv = ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups")
        env = {"PATH": os.defpath, "HOME": str(self.dir), "LANG": "C.UTF-8"}
        command = self._in_namespace(*setpriv, "patroni", str(config))
        self.patroni = Process(f"patroni-{self.name}", command, env=env, log=self.dir / "patroni.log", cwd=self.dir)

    def kill_database(self) -> None:
        """SIGKILL to Patroni and PostgreSQL at once (Patroni starts the postmaster in a
        session of its own): every process of the namespace but etcd, which stays a member."""
        self._kill(keep=self.etcd)

    def stop(self) -> None:
        self._kill(keep=None)

    def _kill(self, keep: Process | None) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True).stdout
        for pid in (int(pid) for pid in pids.split()):
            if keep is None or pid != keep.popen.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for process in (self.patroni, self.etcd):
            if process is not None and process is not keep:
                process.popen.wait(10)

    def answers(self, path: str) -> bool:
        """Whether Patroni answers 200 to GET `path` (`/primary`, `/sync`, `/replica`, ...)."""
        try:
            return httpx.get(f"{self.rest}{path}", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def psql(self, sql: str) -> list[str]:
        """psql on this host's PostgreSQL from inside its namespace (so also while it is cut
        off), in the `app` database, stopping at the first error."""
        options = ("-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-d", "app", "-v", "ON_ERROR_STOP=1")
        return self._in_namespace("psql", *options, "-tAc", sql)

    def writable(self) -> bool:
        """Whether its PostgreSQL accepts connections and is not in recovery."""
        result = subprocess.run(self.psql("SELECT pg_is_in_recovery()"), capture_output=True, text=True, timeout=10)
        return result.stdout.strip() == "f"

    def output(self) -> str:
        logs = [self.dir / "patroni.log", self.dir / "etcd.log"]
        # Patroni's lines, without the tracebacks of REST requests a closed balancer check cut.
        return "\n".join(f"-- {log.name}\n{_log_lines(log)[-6000:]}" for log in logs if log.exists())


def _log_lines(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if line and not line[0].isspace() and not line.startswith("Traceback"))


def patroni_config(cluster: str, member: Member, members: list[Member], subnet: str) -> dict[str, object]:
    """Patroni's settings for one member (docs/high-availability.md explains each)."""
    hba = ["local all all trust", "host all all 127.0.0.1/32 trust", f"host all all {subnet} trust",
           f"host replication all {subnet} trust", "host replication all 127.0.0.1/32 trust"]  # fmt: skip
    user = {"username": "postgres", "password": "unused-trust-auth"}
    return {
        "scope": cluster,
        "name": member.name,
        "restapi": {"listen": f"{member.address}:{REST_PORT}", "connect_address": f"{member.address}:{REST_PORT}"},
        # etcd's v2 API, not v3: Patroni 3.0.2 (Debian 12's) renews its leader key through v3
        # with a plain put, and an old primary back from a partition, still demoting itself,
        # overwrote the new primary's key with it and was promoted again: 54 to 58 acknowledged
        # todos lost in 4 of 8 runs of the partition test. Through v2 the renewal is a
        # compare-and-swap on the key's value (its own name), which fails for it.
        "etcd": {"hosts": [f"{other.address}:{ETCD_CLIENT_PORT}" for other in members]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 1048576,
                # A member whose timeline is behind the cluster's (an old primary back from a
                # partition, with commits nobody acknowledged) never takes the lock.
                "check_timeline": True,
                # A commit is acknowledged once a second host has it on disk, and only that
                # host may be promoted; strict: with no such host, writes wait instead of
                # going on with one copy.
                "synchronous_mode": True,
                "synchronous_mode_strict": True,
                "postgresql": {
                    "use_pg_rewind": True,
                    # No replication slots: a new primary has none for its replicas until its
                    # next loop, and they cannot stream (nor be its synchronous standby) until
                    # then. wal_keep_size keeps what a replica that is behind still needs.
                    "use_slots": False,
                    # wal_sender_timeout: a primary cut off from its standbys finishes its
                    # shutdown (which waits for them) within 10 s instead of a minute.
                    # wal_retrieve_retry_interval: a standby waiting for WAL from a primary
                    # that is gone looks again after this, not 5 s, and a promotion asked
                    # meanwhile waited out those 5 s (a switchover: 6.3 s without a primary).
                    "parameters": {
                        "max_connections": 200,
                        "wal_keep_size": "128MB",
                        "wal_sender_timeout": "10s",
                        "wal_retrieve_retry_interval": "250ms",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
        },
        "postgresql": {
            "listen": f"{member.address},127.0.0.1:{PG_PORT}",
            "connect_address": f"{member.address}:{PG_PORT}",
            "data_dir": str(member.dir / "data"),
            "bin_dir": str(PG_BIN),
            "pgpass": str(member.dir / "pgpass"),
            # An old primary whose pg_rewind fails (one run of the network cut: its shutdown had
            # not finished when it came back) stays stopped; instead it is cloned anew from the
            # primary. What it loses is only its own diverged history, which nobody acknowledged.
            "remove_data_directory_on_rewind_failure": True,
            "authentication": {"superuser": user, "replication": user, "rewind": user},
            "parameters": {"unix_socket_directories": str(member.dir)},
            "pg_hba": hba,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


class PostgresBalancer(Balancer):
    """HAProxy in TCP mode on the bridge: every connection goes to the member whose Patroni
    answers `GET /primary` with 200, and the connections to one that stops answering it are
    closed when it is marked down, so no client stays on a demoted or lost primary."""

    def __init__(self, stack: contextlib.ExitStack, members: list[Member], *, listen: str, logs: Path) -> None:
        port = free_port()
        servers = "".join(
            f"    server {member.name} {member.address}:{PG_PORT} check port {REST_PORT}\n" for member in members
        )
        sections = (
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            # Longer than the app's connection recycle (30 min): an idle connection is the
            # app's to close, not the balancer's.
            "    timeout client 1h\n    timeout server 1h\n"
            "    timeout check 1s\n"
            "listen postgres\n"
            f"    bind {listen}:{port}\n"
            "    option httpchk GET /primary\n"
            "    http-check expect status 200\n"
            f"    default-server inter {CHECK_MS}ms fastinter {FAST_CHECK_MS}ms downinter {FAST_CHECK_MS}ms"
            f" fall {FALL} rise 1 on-marked-down shutdown-sessions\n"
            f"{servers}"
        )
        super().__init__(stack, "haproxy-postgres", sections, proxy="postgres", listen=listen, port=port, logs=logs)
        self.listen = listen

    def url(self, database: str = "app") -> str:
        return f"postgresql://postgres@{self.listen}:{self.port}/{database}"


class HaCluster(AppTier):
    """Application hosts behind HAProxy, as in test_cluster.py, on a Patroni cluster of three."""

    MEMBERS = 3

    def __init__(self, stack: contextlib.ExitStack, *, hosts: int, env: Mapping[str, str]) -> None:
        super().__init__(stack, hosts=hosts, env=env)
        self.members: list[Member] = []
        for index in range(101, 101 + self.MEMBERS):
            namespace, address = self.network.add_host(index)
            self.members.append(Member(stack, f"d{index - 100}", index, namespace, address))
        self.name = f"asgi_todo-{self.network.tag}"
        for member in self.members:
            member.start_etcd(self.members, token=self.name)
        for member in self.members:
            wait_until(f"etcd on {member.name}", member.etcd_healthy, timeout=60, step=0.2)
        subnet = str(self.network.subnet)
        self.configs = {
            member.name: member.write_config(patroni_config(self.name, member, self.members, subnet))
            for member in self.members
        }
        etcd = [f"{member.address}:{ETCD_CLIENT_PORT}" for member in self.members]
        (self.logs / "patronictl.yml").write_text(json.dumps({"etcd": {"hosts": etcd}}))
        for member in self.members:
            member.start_patroni(self.configs[member.name])
        self.balancer = PostgresBalancer(stack, self.members, listen=self.network.gateway, logs=self.logs)
        self.wait_healthy(timeout=90)
        run(["psql", self.balancer.url("postgres"), "-c", "CREATE DATABASE app"])

    def database_url(self) -> str:
        return self.balancer.url()

    def primary(self) -> Member:
        (primary,) = [member for member in self.members if member.answers("/primary")]
        return primary

    def healthy(self) -> bool:
        """A primary in the balancer, a synchronous standby, and the third member replicating."""
        roles = [
            (member.answers("/primary"), member.answers("/sync"), member.answers("/replica")) for member in self.members
        ]
        primaries = [member.name for member, role in zip(self.members, roles, strict=True) if role[0]]
        if sorted(role for role in roles) != [(False, False, True), (False, True, True), (True, False, False)]:
            return False
        return self.balancer.states()[primaries[0]] == "UP"

    def wait_healthy(self, *, timeout: float) -> float:
        return wait_until("a primary, a synchronous standby and a replica", self.healthy, timeout=timeout, step=0.25)

    def patronictl(self, *arguments: str) -> str:
        return run(["patronictl", "-c", str(self.logs / "patronictl.yml"), *arguments, self.name])

    def diagnostics(self) -> str:
        parts = [super().diagnostics()]
        parts += [f"--- {member.name}\n{member.output()}" for member in self.members]
        with contextlib.suppress(AssertionError):
            parts.append(self.patronictl("list"))
        return "\n".join(parts)
