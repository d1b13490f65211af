"""Bounded request heads and X-Forwarded-For through real servers (docs: Security, "Request heads" and "Logs"):
under `asgi-todo serve` and under gunicorn, a head over MAX_HEADER_BYTES is refused, a head
that takes longer than HEADER_TIMEOUT is cut off, `/health` keeps answering other clients
meanwhile, and a forwarded value that is not an address is not taken as the client."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from asgi_todo.protocol import forwarded_addresses

from .helpers import ALICE
from .servers import Server, free_port, server_env, start, start_gunicorn

pytestmark = pytest.mark.process

MIB = 1024 * 1024
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
# Generous bounds on behaviour, not timings: a client left hanging would wait forever.
PATIENCE = 30


def start_serve(env: dict[str, str]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "asgi_todo", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return start(command, env, port=port)


@pytest.fixture(params=["serve", "gunicorn"])
def server(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Server]:
    env = server_env(sqlite_url, RESET_DB="1", HEADER_TIMEOUT="2", MAX_HEADER_BYTES="16384")
    started = start_serve(env) if request.param == "serve" else start_gunicorn(env, workers=1)
    try:
        started.wait_healthy()
        yield started
    finally:
        started.stop()


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
    reply = answer(attacker)
    attacker.close()
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
