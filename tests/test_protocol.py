"""Bounded request heads and X-Forwarded-For through real servers (docs: Security, "Request heads"
and "Logs"; docs/protocol-limits.md): under `asgi-todo serve` and under gunicorn, a head (or a
chunked body's trailer) over MAX_HEADER_BYTES is refused, a head that takes longer than
HEADER_TIMEOUT, a body that stops for BODY_TIMEOUT or drips slower than BODY_MIN_RATE is cut
off, `/health` keeps answering other clients meanwhile, pipelined answers keep their order,
and a forwarded value that is not an address is not taken as the client."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from asgi_todo.protocol import forwarded_addresses

from .helpers import ALICE, scalar, server_login
from .servers import Server, children, free_port, read_response, server_env, start, start_gunicorn

pytestmark = pytest.mark.process

MIB = 1024 * 1024
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
# Generous bounds on behaviour, not timings: a client left hanging would wait forever.
PATIENCE = 30


def start_serve(env: dict[str, str]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "asgi_todo", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return start(command, env, port=port)


def serving(launcher: str, env: dict[str, str]) -> Iterator[Server]:
    started = start_serve(env) if launcher == "serve" else start_gunicorn(env, workers=1)
    try:
        started.wait_healthy()
        yield started
    finally:
        started.stop()


@pytest.fixture(params=["serve", "gunicorn"])
def server(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Server]:
    env = server_env(
        sqlite_url, RESET_DB="1", HEADER_TIMEOUT="2", MAX_HEADER_BYTES="16384", BODY_TIMEOUT="1", BODY_MIN_RATE="100"
    )
    yield from serving(request.param, env)


@pytest.fixture(params=["serve", "gunicorn"])
def drip_server(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Server]:
    """BODY_TIMEOUT far longer than a drip's pauses (0.5 s), so only BODY_MIN_RATE can end one."""
    env = server_env(sqlite_url, RESET_DB="1", BODY_TIMEOUT="3", BODY_MIN_RATE="100")
    yield from serving(request.param, env)


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return sock


def answer(sock: socket.socket) -> bytes:
    """What the server sent before closing (b"" for a bare close or a reset)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def health_ok(server: Server) -> bool:
    return httpx.get(f"{server.url}/health", timeout=PATIENCE).status_code == 200


def test_a_head_within_the_limit_is_served(server: Server) -> None:
    response = httpx.get(f"{server.url}/health", headers={"X-Padding": "a" * 15000}, timeout=PATIENCE)
    assert response.status_code == 200


def test_a_head_over_the_limit_is_431(server: Server) -> None:
    response = httpx.get(f"{server.url}/health", headers={"X-Padding": "a" * 17000}, timeout=PATIENCE)
    assert response.status_code == 431
    assert response.json() == {"detail": "Request header fields too large"}
    assert health_ok(server)


def test_a_64_mib_header_is_cut_off_while_health_answers(server: Server) -> None:
    """The attacker's connection is refused long before its header ends; meanwhile other
    clients' /health requests all succeed."""
    attacker = connect(server)
    sent = 0
    chunk = b"a" * 65536

    def attack() -> None:
        nonlocal sent
        try:
            attacker.sendall(HEAD + b"X-Big: ")
            while sent < 64 * MIB:
                attacker.sendall(chunk)
                sent += len(chunk)
            attacker.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what should happen

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    healthy = [health_ok(server) for _ in range(10)]
    thread.join(PATIENCE * 2)
    assert not thread.is_alive()
    with attacker:
        reply = answer(attacker)
    assert all(healthy), healthy
    assert sent < 64 * MIB, "the server read the whole 64 MiB header"
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert health_ok(server)


@pytest.mark.parametrize(
    "opening",
    [
        pytest.param(b"", id="silent"),
        pytest.param(HEAD, id="slow-headers"),
        pytest.param(b"GET /hea", id="slow-request-line"),
    ],
)
def test_slow_heads_are_cut_off_while_health_answers(server: Server, opening: bytes) -> None:
    """Slow-loris senders: each connection dribbles a header byte every half second and is
    closed by the server (HEADER_TIMEOUT=2 here), while /health keeps answering."""
    lorises = [connect(server) for _ in range(20)]
    for loris in lorises:
        loris.sendall(opening)
    closed: set[int] = set()
    deadline = time.monotonic() + PATIENCE
    while len(closed) < len(lorises) and time.monotonic() < deadline:
        assert health_ok(server)
        for index, loris in enumerate(lorises):
            if index in closed:
                continue
            try:
                loris.sendall(b"X" if opening else b"")
                loris.settimeout(0.01)
                if loris.recv(65536, socket.MSG_PEEK) == b"":
                    closed.add(index)
                else:
                    reply = loris.recv(65536)
                    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
                    closed.add(index)
            except TimeoutError:
                pass
            except OSError:
                closed.add(index)
        time.sleep(0.5)
    for loris in lorises:
        loris.close()
    assert len(closed) == len(lorises), f"{len(lorises) - len(closed)} slow connections still open"
    assert health_ok(server)


TOKEN_HEAD = b"POST /api/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
# Far over MAX_HEADER_BYTES (16 KiB here): unbounded, a trailer this size held the worker's
# event loop for seconds while the parser gathered it.
TRAILER_BYTES = 32 * MIB


def livez_seconds(client: httpx.Client) -> float:
    started = time.perf_counter()
    assert client.get("/livez").status_code == 200
    return time.perf_counter() - started


def test_a_small_trailer_is_accepted(server: Server) -> None:
    form = urlencode({"username": ALICE[0], "password": "wrong password"}).encode()
    with connect(server) as sock:
        sock.sendall(
            TOKEN_HEAD + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"%x\r\n%s\r\n0\r\nX-Checksum: 1234\r\n\r\n" % (len(form), form)
        )
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 401 "), reply[:300]


def test_a_huge_trailer_is_cut_off_while_livez_answers(server: Server) -> None:
    """A chunked body's trailer counts towards MAX_HEADER_BYTES with the head: refused as
    soon as it passes the limit, and another connection's /livez stays prompt meanwhile
    (5.5 s with a 64 MiB trailer before trailers counted)."""
    attacker = connect(server)
    sent = 0
    chunk = b"a" * 65536

    def attack() -> None:
        nonlocal sent
        try:
            attacker.sendall(TOKEN_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX-Big: ")
            while sent < TRAILER_BYTES:
                attacker.sendall(chunk)
                sent += len(chunk)
            attacker.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what should happen

    thread = threading.Thread(target=attack, daemon=True)
    with httpx.Client(base_url=server.url, timeout=PATIENCE) as client:
        livez_seconds(client)  # connected, and the worker warm
        thread.start()
        waits = [livez_seconds(client)]
        while thread.is_alive() or len(waits) < 10:
            waits.append(livez_seconds(client))
    thread.join(PATIENCE)
    with attacker:
        reply = answer(attacker)
    assert max(waits) < 1.0, [round(wait, 3) for wait in waits]  # a generous bound: 5.5 s before
    assert sent < TRAILER_BYTES, "the server read the whole trailer"
    assert reply == b"" or reply.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), reply[:200]


@pytest.mark.parametrize(
    "opening",
    [
        pytest.param(b"Content-Length: 100\r\n\r\nusername=", id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n9\r\nusername=\r\n", id="chunked"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n10\r\nuser", id="mid-chunk"),
    ],
)
def test_a_stalled_body_is_closed_with_a_408(server: Server, opening: bytes) -> None:
    """The head and part of a body, then nothing: closed after BODY_TIMEOUT (1 s here)."""
    with connect(server) as sock:
        sock.settimeout(10)  # far more than BODY_TIMEOUT: a server that never closes fails here
        sock.sendall(TOKEN_HEAD + opening)
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:300]
    assert json.loads(reply.partition(b"\r\n\r\n")[2]) == {"detail": "Request body not received in time"}
    assert health_ok(server)


def test_a_slow_upload_above_the_minimum_rate_is_read(server: Server) -> None:
    """A body that keeps coming faster than BODY_MIN_RATE (100 bytes a second here), a
    piece every half BODY_TIMEOUT for three times BODY_TIMEOUT, is read to its end."""
    form = urlencode({"username": ALICE[0], "password": ALICE[1], "scope": "x" * 560}).encode()
    with connect(server) as sock:
        sock.sendall(TOKEN_HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(form))
        pieces = 6
        step = -(-len(form) // pieces)  # 100 bytes every 0.5 s: twice the minimum rate
        for offset in range(0, len(form), step):
            time.sleep(0.5)
            sock.sendall(form[offset : offset + step])
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]


def drip(sock: socket.socket) -> bool:
    """One more byte of a body; whether the server has closed the connection (after its 408)."""
    try:
        sock.sendall(b"u")
        sock.setblocking(False)
        if sock.recv(65536, socket.MSG_PEEK) == b"":
            return True
        sock.settimeout(PATIENCE)
        reply = sock.recv(65536)
    except BlockingIOError:
        return False  # nothing to read: still open
    except OSError:
        return True  # reset: closed, its 408 lost to the bytes sent meanwhile
    finally:
        sock.settimeout(PATIENCE)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:300]
    assert json.loads(reply.partition(b"\r\n\r\n")[2]) == {"detail": "Request body not received in time"}
    return True


DRIP_HEAD = TOKEN_HEAD + b"Content-Length: 100000\r\n\r\n"


def test_a_dripping_body_is_closed_with_a_408(drip_server: Server) -> None:
    """A byte every half second is progress, so BODY_TIMEOUT (3 s) alone never ends it; with
    BODY_MIN_RATE (100 bytes a second) the body has BODY_TIMEOUT plus a second per 100 bytes,
    so the drip is closed after about 3 s (it was read for as long as it dripped before)."""
    with connect(drip_server) as sock:
        sock.sendall(DRIP_HEAD)
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 15:
            time.sleep(0.5)
            closed = drip(sock)
        waited = time.monotonic() - started
    assert closed, "a body dripping a byte every 0.5 s was still read after 15 s"
    assert waited > 2.5, f"closed after {waited:.1f} s, before BODY_TIMEOUT"
    assert health_ok(drip_server)


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_many_dripping_bodies_are_all_closed_and_their_files_freed(drip_server: Server) -> None:
    """50 connections dripping a byte every half second are all closed, /health answers
    meanwhile, and the serving process's open files come back down."""
    workers = children(drip_server.process.pid)
    pid = workers.pop() if workers else drip_server.process.pid  # gunicorn's one worker, or serve itself
    before = open_files(pid)
    drippers = [connect(drip_server) for _ in range(50)]
    for dripper in drippers:
        dripper.sendall(DRIP_HEAD)
    assert health_ok(drip_server)
    held = open_files(pid)
    closed: set[int] = set()
    deadline = time.monotonic() + PATIENCE
    while len(closed) < len(drippers) and time.monotonic() < deadline:
        time.sleep(0.5)
        closed |= {index for index, dripper in enumerate(drippers) if index not in closed and drip(dripper)}
    assert health_ok(drip_server)
    for dripper in drippers:
        dripper.close()
    assert len(closed) == len(drippers), f"{len(drippers) - len(closed)} dripping connections still open"
    assert held >= before + 50, (before, held)
    after = open_files(pid)
    assert after <= before + 5, (before, held, after)


def test_an_idle_keep_alive_connection_keeps_its_own_timeout(server: Server) -> None:
    """BODY_TIMEOUT (1 s) is for bodies in progress: a connection idle between requests,
    after a request with a body, lives on until the keep-alive timeout (5 s)."""
    form = urlencode({"username": ALICE[0], "password": "wrong password"}).encode()
    with connect(server) as sock:
        sock.sendall(TOKEN_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(form), form))
        assert read_response(sock).startswith(b"HTTP/1.1 401 ")
        time.sleep(2.5)
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]


def test_pipelined_requests_past_the_limit_together_are_all_answered(server: Server) -> None:
    """The limit is per request: 601 small requests in one write (22 KiB, over the 16 KiB
    limit together) are each answered, in order (a 431 for the lot before)."""
    livez = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with connect(server) as sock:
        sock.sendall((livez + b"\r\n") * 600 + livez + b"Connection: close\r\n\r\n")
        reply = answer(sock)
    assert reply.count(b"HTTP/1.1 200 ") == 601, reply[:300]
    assert reply.count(b"HTTP/1.1 ") == 601


@pytest.fixture
def served(database_url: str) -> Iterator[Server]:
    """`asgi-todo serve` on the test's database (both databases)."""
    started = start_serve(server_env(database_url, RESET_DB="1", MAX_HEADER_BYTES="16384"))
    try:
        started.wait_healthy()
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize(
    ("refused", "status"),
    [
        pytest.param(HEAD + b"X-Padding: " + b"a" * 50000 + b"\r\n\r\n", b"431", id="oversized-head"),
        pytest.param(b"GET /livez HTTP/1.1\r\nBad Header\r\n\r\n", b"400", id="malformed-head"),
    ],
)
def test_pipelined_answers_keep_their_order_before_a_refusal(
    served: Server, database_url: str, refused: bytes, status: bytes
) -> None:
    """A create and, in the same write, a request the server refuses: the create's 201
    comes first, then the refusal, then the close; the todo is stored once (before, the 431
    alone came back, as the create's answer, while the todo was stored)."""
    authorization = server_login(served.url, *ALICE)["Authorization"].encode()
    body = json.dumps({"text": "pipelined before a refusal"}).encode()
    create = (
        b"POST /api/todos/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (authorization, len(body), body)
    )
    with connect(served) as sock:
        sock.sendall(create + refused)
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 201 "), reply[:300]
    second = reply.find(b"HTTP/1.1 ", 1)
    assert reply[second:].startswith(b"HTTP/1.1 " + status + b" "), reply[:600]
    assert reply.count(b"HTTP/1.1 ") == 2, reply[:600]
    assert scalar(database_url, "SELECT count(*) FROM todos WHERE text = 'pipelined before a refusal'") == 1


def test_a_forwarded_value_that_is_not_an_address_is_not_the_client(server: Server, sqlite_url: str) -> None:
    """From a trusted proxy (loopback), an address in X-Forwarded-For is the client; anything
    else is ignored, so the client key stays the proxy's own address."""
    for forwarded in ("not-an-address", "203.0.113.7", "x\tforged", "1.2.3.4:abc"):
        response = httpx.post(
            f"{server.url}/api/auth/token",
            data={"username": ALICE[0], "password": "wrong password"},
            headers={"X-Forwarded-For": forwarded},
            timeout=PATIENCE,
        )
        assert response.status_code == 401, response.text
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            keys = set(connection.execute(sa.text("SELECT key FROM login_failures")).scalars())
    finally:
        engine.dispose()
    assert keys == {f"account:{ALICE[0]}", "client:127.0.0.1", "client:203.0.113.7"}, keys


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        pytest.param(b"203.0.113.7", b"203.0.113.7", id="v4"),
        pytest.param(b"203.0.113.7:8080", b"203.0.113.7:8080", id="v4-port"),
        pytest.param(b"[2001:db8::1]:443, 2001:db8::2", b"[2001:db8::1]:443, 2001:db8::2", id="v6"),
        pytest.param(b"unknown, 198.51.100.1", b"198.51.100.1", id="unknown-dropped"),
        pytest.param(b"evil\nline", b"", id="control-characters"),
        pytest.param(b"1.2.3.4:abc, 1.2.3.4:99999999", b"", id="bad-ports"),
        pytest.param(b"[2001:db8::1]x", b"", id="junk-after-bracket"),
        pytest.param(b"", b"", id="empty"),
    ],
)
def test_forwarded_addresses_keeps_only_addresses(value: bytes, kept: bytes) -> None:
    assert forwarded_addresses(value) == kept
