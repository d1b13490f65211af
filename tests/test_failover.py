"""The service through a PostgreSQL failover (docs/high-availability.md): two application
hosts behind HAProxy, as in test_cluster.py, on a Patroni cluster of three database hosts
with synchronous replication, reached through an HAProxy that follows Patroni's `/primary`.

Clients write steadily through the front balancer, each retrying a todo with its own
Idempotency-Key on a 503 or a cut connection until it is answered, and record every todo
answered 201. Three faults, one test each: a planned switchover (patronictl), the primary's
Patroni and PostgreSQL killed with SIGKILL, the primary cut off the network. For each:
acknowledged todos lost and todos stored twice (both must be 0), the longest time without a
successful write (under 15 s for a failure, the issue's goal; under 10 s for a switchover,
where the issue's goal of 2 s is not always met: see SWITCHOVER_GAP_SECONDS), and answers
other than 2xx or a 503 with Retry-After (0).

Run by hand (as root, which namespaces need): `CI=true python -m pytest tests/test_failover.py -s -v`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from .cluster import PG_BIN, STARTED, host_env_defaults, run, wait_until
from .helpers import ALICE, require, server_login
from .patroni import LOOP_WAIT, TTL, HaCluster, Member

pytestmark = [pytest.mark.cluster, pytest.mark.process]

HOSTS = 2
WRITERS = 3
# The longest time without a successful write: the goal for a failure, 15 s, is met.
# Its goal for a switchover, 2 s, is not always met (docs/high-availability.md has the figures
# and where the time goes): from the old primary's shutdown to the new one acknowledging a
# commit, Patroni's hand-over takes 1.5 to 2 s, and the app hosts' way back into the front
# balancer can add a second: 2.25 to 3.54 s on a busy machine. The bound catches a change that
# makes it much worse, such as the 5 s a promotion waited before wal_retrieve_retry_interval
# was set (tests/patroni.py): 6.56 s.
FAILURE_GAP_SECONDS = 15
SWITCHOVER_GAP_SECONDS = 6
RETRY_PAUSE = 0.1  # a test's client retries at once; a real one waits Retry-After
REQUEST_TIMEOUT = 5


@pytest.fixture(scope="module")
def ha() -> Iterator[HaCluster]:
    tools = ("ip", "haproxy", "psql", "patroni", "patronictl", "etcd", "setpriv")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    missing += [] if (PG_BIN / "initdb").exists() else [str(PG_BIN / "initdb")]
    require(
        not missing, f"{', '.join(missing)} (Debian packages iproute2, haproxy, patroni, etcd-server, postgresql-15)"
    )
    require(os.geteuid() == 0, "root (network namespaces)")
    env = host_env_defaults()
    with contextlib.ExitStack() as stack:
        built = HaCluster(stack, hosts=HOSTS, env=env)
        try:
            run([sys.executable, "-m", "asgi_todo", "db", "reset"], env=built.host_env())
            built.start_hosts(built.hosts, built.host_env())
            yield built
        finally:
            print(built.diagnostics())
    # Nothing of it is left: no namespace, no bridge, no process. (The kernel lets go of a
    # namespace's links in the background, once the last process in it is reaped.)
    wait_until("the namespaces and links gone", lambda: built.network.tag not in _links(), timeout=30)
    assert not [process.name for process in STARTED if process.alive]


def _links() -> str:
    return run(["ip", "netns", "list"]) + run(["ip", "link", "show"])


@pytest.fixture
def healthy(ha: HaCluster) -> HaCluster:
    """Three members (a primary, its synchronous standby, a replica) and both hosts UP."""
    for member in ha.members:
        if member.patroni is None or not member.patroni.alive:
            member.start_patroni(ha.configs[member.name])
    ha.wait_healthy(timeout=60)
    ha.wait_states("UP", timeout=30)
    return ha


@dataclass
class Writes:
    """What the writers saw: each todo answered 201 (id -> text), when each was answered,
    and every answer by kind."""

    acknowledged: dict[int, str] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def longest_gap(self) -> float:
        earlier, later = self.gap()
        return later - earlier

    def gap(self) -> tuple[float, float]:
        """The last successful write before the longest time without one, and the first after."""
        return max(pairwise(sorted(self.times)), key=lambda pair: pair[1] - pair[0], default=(0.0, 0.0))

    def unexpected(self) -> int:
        """Answers other than 2xx or a 503 with Retry-After. A create's Idempotency-Key is
        claimed in the transaction of its write, so a write lost with the primary leaves no
        key behind it "in flight": a 409 is unexpected too."""
        return sum(count for kind, count in self.answers.items() if kind not in ("2xx", "503", "cut"))


class Writers:
    """WRITERS threads each creating todos one after another through the front balancer."""

    def __init__(self, url: str, token: str, tag: str) -> None:
        self.url, self.token, self.tag = url, token, tag
        self.writes = Writes()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(n,), daemon=True) for n in range(WRITERS)]
        for thread in self.threads:
            thread.start()

    def _write(self, writer: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT) as http:
            number = 0
            while not self.stopping.is_set():
                number += 1
                # The key is a Structured Field string (draft-ietf-httpapi-idempotency-key-header).
                text, key = f"{self.tag} {writer}-{number}", f'"{uuid.uuid4()}"'
                # The same todo, with the same key, until it is answered: a retry of one that
                # was stored must not store it again.
                while not self.stopping.is_set():
                    kind = self._create(http, {**headers, "Idempotency-Key": key}, text)
                    if kind != "retry":
                        break
                    time.sleep(RETRY_PAUSE)

    def _create(self, http: httpx.Client, headers: dict[str, str], text: str) -> str:
        try:
            answer = http.post("/api/todos/", json={"text": text}, headers=headers)
        except httpx.TransportError:  # a cut connection, or no answer within REQUEST_TIMEOUT
            self._count("cut")
            return "retry"
        if answer.status_code == 503:
            self._count("503" if "Retry-After" in answer.headers else "503 without Retry-After")
            return "retry"
        if 200 <= answer.status_code < 300:
            with self.writes.lock:
                self.writes.acknowledged[answer.json()["id"]] = text
                self.writes.times.append(time.monotonic())
                self.writes.answers["2xx"] += 1
            return "done"
        self._count(f"{answer.status_code}: {answer.text[:200]}")
        return "done"

    def _count(self, kind: str) -> None:
        with self.writes.lock:
            self.writes.answers[kind] += 1

    def stop(self) -> Writes:
        self.stopping.set()
        for thread in self.threads:
            thread.join(REQUEST_TIMEOUT + 5)
        return self.writes


@pytest.fixture
def token(healthy: HaCluster) -> str:
    return server_login(healthy.haproxy.url, *ALICE)["Authorization"].split()[1]


@dataclass(frozen=True)
class Figures:
    lost: int
    duplicates: int
    longest_gap_s: float
    unexpected: int
    acknowledged: int
    answers: dict[str, int]


def _measure(ha: HaCluster, tag: str, writes: Writes) -> Figures:
    engine = sa.create_engine(ha.balancer.url().replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, text FROM todos WHERE text LIKE :tag"), {"tag": f"{tag} %"})
            stored = [(row.id, row.text) for row in rows]
    finally:
        engine.dispose()
    ids = {todo_id: text for todo_id, text in stored}
    lost = sum(ids.get(todo_id) != text for todo_id, text in writes.acknowledged.items())
    duplicates = sum(count - 1 for count in Counter(text for _, text in stored).values())
    figures = Figures(
        lost=lost,
        duplicates=duplicates,
        longest_gap_s=round(writes.longest_gap(), 2),
        unexpected=writes.unexpected(),
        acknowledged=len(writes.acknowledged),
        answers=dict(writes.answers),
    )
    print(f"\nfailover {tag}: {figures}")
    return figures


def _assert_goals(figures: Figures, gap: float) -> None:
    assert figures.acknowledged > 0
    assert figures.lost == 0, figures
    assert figures.duplicates == 0, figures
    assert figures.unexpected == 0, figures
    assert figures.longest_gap_s < gap, figures


def _written_after(writes: Writes, moment: float) -> int:
    with writes.lock:
        return sum(at > moment for at in writes.times)


@dataclass(frozen=True)
class Fault:
    writes: Writes
    promoted_s: float  # from the fault until another member answers /primary
    taken_out: list[str]  # the app hosts the front balancer took out (their /readyz failed)


def _taken_out(ha: HaCluster) -> Counter[str]:
    """How often the front balancer has taken each app host out of rotation."""
    return Counter({name: int(row["chkdown"]) for name, row in ha.haproxy.stats().items()})


def _fault(ha: HaCluster, token: str, tag: str, fault: Callable[[Member], None]) -> Fault:
    """Writers through the balancer, the fault to the primary once they write, until they
    have written for a while on the new primary."""
    writers = Writers(ha.haproxy.url, token, tag)
    try:
        wait_until("writes before the fault", lambda: _written_after(writers.writes, 0) >= 20, timeout=30)
        old, before = ha.primary(), _taken_out(ha)
        started = time.monotonic()
        fault(old)
        wait_until("a new primary", lambda: any(m.answers("/primary") for m in ha.members if m is not old), timeout=60)
        promoted = time.monotonic() - started
        wait_until("writes after the fault", lambda: _written_after(writers.writes, started) >= 30, timeout=60)
        resumed = time.monotonic()
        wait_until("more writes", lambda: _written_after(writers.writes, resumed) >= 20, timeout=30)
    finally:
        writes = writers.stop()
    stopped, resumed = writes.gap()
    at = datetime.fromtimestamp(time.time() - time.monotonic() + started, UTC).strftime("%H:%M:%S.%f")[:-3]
    print(  # to read beside the members' logs (HaCluster.diagnostics)
        f"{tag}: fault at {at} UTC; writes stopped {stopped - started:+.2f} s,"
        f" resumed {resumed - started:+.2f} s, new primary {promoted:+.2f} s"
    )
    return Fault(writes, promoted, sorted(_taken_out(ha) - before))


def _assert_unready_then_back(ha: HaCluster, fault: Fault) -> None:
    """With no writable primary for seconds, every app host's /readyz failed and the front
    balancer took it out; each is back in rotation now."""
    assert fault.taken_out == sorted(host.name for host in ha.hosts), fault.taken_out
    ha.wait_states("UP", timeout=10)


def test_switchover(healthy: HaCluster, token: str) -> None:
    def switchover(old: Member) -> None:
        candidate = next(member for member in healthy.members if member.answers("/sync"))
        healthy.patronictl("switchover", "--leader", old.name, "--candidate", candidate.name, "--force")

    fault = _fault(healthy, token, "switchover", switchover)
    figures = _measure(healthy, "switchover", fault.writes)
    print(f"switchover: new primary after {fault.promoted_s:.2f} s; hosts taken out: {fault.taken_out}")
    _assert_goals(figures, SWITCHOVER_GAP_SECONDS)


def test_sigkill_of_the_primary(healthy: HaCluster, token: str) -> None:
    fault = _fault(healthy, token, "sigkill", lambda old: old.kill_database())
    figures = _measure(healthy, "sigkill", fault.writes)
    print(f"sigkill: new primary after {fault.promoted_s:.2f} s (ttl {TTL} s, loop_wait {LOOP_WAIT} s)")
    _assert_goals(figures, FAILURE_GAP_SECONDS)
    _assert_unready_then_back(healthy, fault)


def test_network_cut_of_the_primary(healthy: HaCluster, token: str) -> None:
    run(["psql", healthy.balancer.url(), "-c", "CREATE TABLE IF NOT EXISTS cut_off (note text)"])
    cut: list[Member] = []
    direct: list[subprocess.Popen[str]] = []

    def partition(old: Member) -> None:
        cut.append(old)
        healthy.network.set_link(old.namespace, old.index, up=False)
        # A client on the cut-off host itself writes there directly.
        insert = old.psql("INSERT INTO cut_off VALUES ('written on the cut-off primary')")
        direct.append(subprocess.Popen(insert, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

    try:
        fault = _fault(healthy, token, "partition", partition)
        (old,) = cut
        # Cut off, it loses its leader key with the etcd quorum and stops being a primary.
        demoted = wait_until("the old primary not writable", lambda: not old.writable(), timeout=30, step=0.5)
    finally:
        for member in cut:
            healthy.network.set_link(member.namespace, member.index, up=True)
    # Back on the network, it follows the new primary (rewound if it had diverged).
    healthy.wait_healthy(timeout=90)
    figures = _measure(healthy, "partition", fault.writes)
    print(f"partition: new primary after {fault.promoted_s:.2f} s; the old one not writable {demoted:.1f} s later")
    # The direct write was never acknowledged: it waited for a synchronous standby it could
    # not reach until the old primary stopped, and it is not in the database.
    (insert,) = direct
    output, _ = insert.communicate(timeout=60)
    kept = run(["psql", healthy.balancer.url(), "-tAc", "SELECT count(*) FROM cut_off"]).strip()
    print(f"partition: the write on the cut-off primary: exit {insert.returncode}, {output.strip()!r}, kept {kept}")
    assert (insert.returncode != 0, kept) == (True, "0")
    _assert_goals(figures, FAILURE_GAP_SECONDS)
    _assert_unready_then_back(healthy, fault)
