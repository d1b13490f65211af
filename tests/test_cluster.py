"""A real cluster on one machine (docs: Deployment, "The cluster test"): three application hosts in
network namespaces, a PostgreSQL of the test's own, HAProxy health-checking `/readyz`, and a
steady wrk load of mixed reads and writes through it while hosts restart, die, and the
database goes away; then the same load through PgBouncer in transaction pooling mode.

Run by hand (as root, which namespaces need): `CI=true python -m pytest -m cluster -s -v`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx
import pytest

from .cluster import (
    CHECK_INTER_MS,
    CHECK_TIMEOUT_MS,
    FALL,
    PG_BIN,
    STARTED,
    Cluster,
    host_env_defaults,
    run,
    wait_until,
)
from .helpers import ALICE, JOHN, TOKEN_URL, require, server_login

pytestmark = [pytest.mark.cluster, pytest.mark.process]

HOSTS = 3
OUTAGE_SECONDS = 10
# Up to here a dead host may still get requests: FALL failed checks, the last one waiting
# out its timeout.
OUT_OF_ROTATION_SECONDS = (FALL * CHECK_INTER_MS + CHECK_TIMEOUT_MS) / 1000


@dataclass(frozen=True)
class Caller:
    token: str
    todo_id: int


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    tools = ("ip", "haproxy", "pgbouncer", "wrk", "psql", "pg_isready")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    missing += [] if (PG_BIN / "initdb").exists() else [str(PG_BIN / "initdb")]
    require(not missing, f"{', '.join(missing)} (Debian packages iproute2, haproxy, pgbouncer, wrk, postgresql-15)")
    require(os.geteuid() == 0, "root (network namespaces)")
    env = host_env_defaults()
    with contextlib.ExitStack() as stack:
        built = Cluster(stack, hosts=HOSTS, env=env)
        try:
            reset = {**env, "DATABASE_URL": built.postgres.url("127.0.0.1")}
            run([sys.executable, "-m", "asgi_todo", "db", "reset"], env=reset)
            for host in built.hosts:
                built.start_host(host, built.host_env())
            yield built
        finally:
            print(built.diagnostics())
    # Nothing of it is left: no namespace, no bridge, no process.
    assert built.network.tag not in run(["ip", "netns", "list"]) + run(["ip", "link", "show"])
    assert not [process.name for process in STARTED if process.alive]


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """Every host up on the database directly and in rotation, whatever the test before did."""
    for host in cluster.hosts:
        if host.process is None or not host.process.alive:
            cluster.start_host(host, cluster.host_env())
    cluster.wait_states("UP", timeout=30)
    return cluster


@pytest.fixture
def caller(healthy: Cluster) -> Caller:
    headers = server_login(healthy.haproxy.url, *ALICE)
    created = httpx.post(f"{healthy.haproxy.url}/api/todos/", json={"text": "patched by the load"}, headers=headers)
    assert created.status_code == 201, created.text
    return Caller(headers["Authorization"].split()[1], created.json()["id"])


def _report(name: str, **figures: object) -> None:
    print(f"\ncluster {name}: " + ", ".join(f"{key}={value}" for key, value in figures.items()))


def _assert_no_write_lost(created: int, stored: int, connections: int) -> None:
    """Every todo answered with a 201 is stored. A few more may be: committed while their
    answer was lost (with a killed host, in an outage, or when wrk stopped with requests in
    flight), never more than one a connection."""
    assert created > 0
    assert created <= stored <= created + connections, f"{created} todos answered 201, {stored} stored"


def test_rolling_restart_of_every_host_fails_no_request(healthy: Cluster, caller: Caller) -> None:
    wrk = healthy.load(token=caller.token, todo_id=caller.todo_id, tag="rolling")
    time.sleep(2)
    exits, restarts = [], []
    for host in healthy.hosts:
        started = time.monotonic()
        exits.append(host.terminate())  # drains: /readyz 503, HAProxy takes it out, then it stops
        healthy.start_host(host, healthy.host_env())
        restarts.append(round(time.monotonic() - started, 1))
    time.sleep(2)
    result = wrk.stop()
    stored = healthy.stored("rolling")
    _report("rolling restart", load=result.summary(), seconds_per_host=restarts, stored=stored)
    assert exits == [0] * HOSTS
    assert result.failed == 0, result.summary()
    _assert_no_write_lost(result.created, stored, wrk.connections)


def test_sigkill_of_a_host_fails_only_requests_in_flight(healthy: Cluster, caller: Caller) -> None:
    wrk = healthy.load(token=caller.token, todo_id=caller.todo_id, tag="sigkill")
    time.sleep(2)
    victim = healthy.hosts[0]
    before = healthy.haproxy.stats()[victim.name]
    victim.kill()
    out = wait_until("the killed host DOWN", lambda: healthy.haproxy.states()[victim.name] == "DOWN", timeout=30)
    time.sleep(3)
    result = wrk.stop()
    after = healthy.haproxy.stats()[victim.name]
    # What HAProxy had sent to the host and not yet seen answered when it died, and what it sent
    # there before it took it out (a request on a keep-alive connection HAProxy held to it
    # fails too; one on a new connection is refused and goes to another host).
    in_flight = int(before["scur"]) + int(after["stot"]) - int(before["stot"])
    stored = healthy.stored("sigkill")
    _report("SIGKILL", load=result.summary(), out_after_s=round(out, 2), sent_to_it=in_flight, stored=stored)
    # Nothing failed on the other hosts, and the dead one was out within two checks.
    assert result.failed <= in_flight, result.summary()
    assert out <= OUT_OF_ROTATION_SECONDS, f"HAProxy routed to the dead host for {out:.2f} s"
    _assert_no_write_lost(result.created, stored, wrk.connections)


def test_database_outage_turns_readiness_off_everywhere_and_loses_no_write(healthy: Cluster, caller: Caller) -> None:
    wrk = healthy.load(token=caller.token, todo_id=caller.todo_id, tag="outage")
    time.sleep(2)
    healthy.postgres.crash()
    crashed = time.monotonic()
    all_down = healthy.wait_states("DOWN", timeout=OUTAGE_SECONDS)
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - crashed)))
    healthy.postgres.start()
    back = time.monotonic()
    all_up = healthy.wait_states("UP", timeout=30)
    write = {"text": "after the outage"}
    headers = {"Authorization": f"Bearer {caller.token}"}

    def writes() -> bool:
        return httpx.post(f"{healthy.haproxy.url}/api/todos/", json=write, headers=headers).status_code == 201

    wait_until("a write through the balancer", writes, timeout=30)
    serving = time.monotonic() - back
    time.sleep(3)
    result = wrk.stop()
    stored = healthy.stored("outage")
    _report(
        "database outage",
        load=result.summary(),
        all_down_after_s=round(all_down, 2),
        all_up_after_return_s=round(all_up, 2),
        serving_after_return_s=round(serving, 2),
        stored=stored,
    )
    _assert_no_write_lost(result.created, stored, wrk.connections)
    # And the cluster serves the whole load again, without a failure.
    after = healthy.load(token=caller.token, todo_id=caller.todo_id, tag="after")
    time.sleep(5)
    again = after.stop()
    _report("after the outage", load=again.summary())
    assert again.failed == 0, again.summary()


def test_pgbouncer_transaction_pooling_gives_no_error(healthy: Cluster, caller: Caller) -> None:
    bouncer = healthy.with_pgbouncer()
    url = healthy.postgres.url(healthy.network.gateway, bouncer.port)
    env = healthy.host_env(DATABASE_URL=url, DB_PREPARED_STATEMENTS="0", UPDATE_DB="1")
    try:
        for host in healthy.hosts:
            assert host.terminate() == 0
        for host in healthy.hosts:  # all at once: the start-up lock is taken through PgBouncer
            host.start(env)
        for host in healthy.hosts:
            wait_until(f"{host.name} ready through PgBouncer", host.ready, timeout=60, step=0.2)
        healthy.wait_states("UP", timeout=30)
        wrk = healthy.load(token=caller.token, todo_id=caller.todo_id, tag="pgbouncer")
        time.sleep(15)
        result = wrk.stop()
        stored = healthy.stored("pgbouncer")
        servers = healthy.postgres.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app'")
        advisory = healthy.postgres.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        _report("PgBouncer (transaction pooling)", load=result.summary(), stored=stored, server_connections=servers)
        assert advisory == "0", "a start-up lock outlived its start"
        assert result.failed == 0, result.summary()
        _assert_no_write_lost(result.created, stored, wrk.connections)
        assert int(servers) <= 4 + 1  # the pool, and psql itself: the hosts' 3 x 4 connections shared
    finally:
        for host in healthy.hosts:
            host.stop()


def test_an_attacker_locked_out_through_haproxy_locks_out_nobody_else(healthy: Cluster) -> None:
    """docs: Behind a proxy. With HAProxy's address not trusted, every client shared its
    per-client counter, and one attacker's 21 wrong passwords on 21 accounts that do not exist
    made Alice's and johndoe's right passwords 429 from other addresses. HAProxy now forwards
    the client (option forwardfor) and the hosts trust HAProxy's address only."""

    def login(address: str, email: str, password: str) -> int:
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(transport=transport, base_url=healthy.haproxy.url) as http:
            return http.post(TOKEN_URL, data={"username": email, "password": password}).status_code

    attacker = "127.0.0.66"
    answers = [login(attacker, f"nobody{index}@example.com", "wrong password") for index in range(21)]
    assert answers[:20] == [401] * 20, answers
    assert answers[20] == 429, answers
    assert login(attacker, *ALICE) == 429  # locked out, even with a right password
    assert login("127.0.0.2", *ALICE) == 200
    assert login("127.0.0.3", *JOHN) == 200
