"""Client addresses behind proxies (docs: Behind a proxy): `/metrics` access is
decided on the connecting peer, never on X-Forwarded-For; X-Forwarded-For from a peer that
is not trusted raises one warning per peer and counts in a metric; addresses are written one
way, and IPv6 clients share the per-client counters of their /64."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from asgi_todo.app import create_app
from asgi_todo.settings import Settings

from .helpers import ALICE, TOKEN_URL
from .servers import Server, server_env, start_gunicorn, start_serve


@pytest.mark.parametrize(
    ("given", "normal", "key"),
    [
        pytest.param("192.0.2.7", "192.0.2.7", "192.0.2.7", id="ipv4"),
        pytest.param("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.7", id="ipv4-mapped"),
        pytest.param("::FFFF:C000:0207", "192.0.2.7", "192.0.2.7", id="ipv4-mapped-hex"),
        pytest.param("2001:DB8:0:1:0:0:0:1", "2001:db8:0:1::1", "2001:db8:0:1::/64", id="ipv6-expanded"),
        pytest.param(
            "2001:db8:0:1:ffff:ffff:ffff:ffff",
            "2001:db8:0:1:ffff:ffff:ffff:ffff",
            "2001:db8:0:1::/64",
            id="ipv6-same-64",
        ),
        pytest.param("testclient", "testclient", "testclient", id="not-an-address"),
    ],
)
def test_addresses_are_written_one_way(given: str, normal: str, key: str) -> None:
    from asgi_todo.context import client_key, normalise_address

    assert normalise_address(given) == normal
    assert client_key(given) == key


class _ClientFromHeader:
    """The test's stand-in for a trusted proxy: `X-Test-Client` becomes the client address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-test-client":
                    scope["client"] = (value.decode(), 1234)
        await self.app(scope, receive, send)


@pytest.fixture
def proxied(settings: Settings) -> Iterator[TestClient]:
    with TestClient(_ClientFromHeader(create_app(settings))) as client:
        yield client


def _wrong_login(client: TestClient, address: str, index: int) -> int:
    form = {"username": f"nobody{index}@example.com", "password": "wrong password"}
    return client.post(TOKEN_URL, data=form, headers={"X-Test-Client": address}).status_code


def test_ipv6_clients_share_the_login_limit_of_their_64(proxied: TestClient, settings: Settings) -> None:
    """One host holds a whole /64: counting each address apart gave it 2**64 fresh counters."""
    limit = settings.login_max_failures_per_client
    assert [_wrong_login(proxied, f"2001:db8:0:1::{index:x}", index) for index in range(1, limit + 1)] == [401] * limit
    assert _wrong_login(proxied, "2001:DB8:0:1:ffff::1", 99) == 429
    assert _wrong_login(proxied, "2001:db8:0:2::1", 100) == 401  # the next /64 is another client
    alice = {"username": ALICE[0], "password": ALICE[1]}
    assert proxied.post(TOKEN_URL, data=alice, headers={"X-Test-Client": "2001:db8:0:3::1"}).status_code == 200


def test_an_ipv4_mapped_address_is_the_ipv4_client(proxied: TestClient, settings: Settings) -> None:
    limit = settings.login_max_failures_per_client
    assert [_wrong_login(proxied, "::ffff:192.0.2.7", index) for index in range(limit)] == [401] * limit
    assert _wrong_login(proxied, "192.0.2.7", 99) == 429


def test_ipv6_clients_share_the_sign_up_limit_of_their_64(proxied: TestClient, settings: Settings) -> None:
    def sign_up(address: str, index: int) -> int:
        body = {"email": f"user{index}@example.com", "password": "long enough"}
        return proxied.post("/api/users/signup", json=body, headers={"X-Test-Client": address}).status_code

    limit = settings.signup_max_per_client
    assert [sign_up(f"2001:db8:0:1::{index + 1:x}", index) for index in range(limit)] == [201] * limit
    assert sign_up("2001:db8:0:1:abcd::1", 98) == 429
    assert sign_up("2001:db8:0:2::1", 99) == 201


# Through real servers: a server on 127.0.0.1, clients bound to 127.0.0.1 or 127.0.0.2.


def _from(address: str, server: Server, path: str, **headers: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, base_url=server.url) as client:
        return client.get(path, headers=headers)


def _start(launcher: str, env: dict[str, str]) -> Server:
    server = start_serve(env) if launcher == "serve" else start_gunicorn(env, workers=1)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.mark.process
@pytest.mark.parametrize("launcher", ["serve", "gunicorn"])
def test_metrics_access_is_decided_on_the_connecting_peer(sqlite_url: str, launcher: str) -> None:
    """With 127.0.0.0/8 trusted as proxies, a request from 127.0.0.2 that forwarded
    127.0.0.1 got the metrics (docs: Behind a proxy, How the address is decided)."""
    env = server_env(sqlite_url, RESET_DB="1", FORWARDED_ALLOW_IPS="127.0.0.0/8", METRICS_ALLOW_IPS="127.0.0.1")
    server = _start(launcher, env)
    try:
        assert _from("127.0.0.1", server, "/metrics").status_code == 200
        assert _from("127.0.0.2", server, "/metrics").status_code == 404
        for forwarded in ("127.0.0.1", "evil, 127.0.0.1", "127.0.0.1, 127.0.0.1"):
            refused = _from("127.0.0.2", server, "/metrics", **{"X-Forwarded-For": forwarded})
            assert refused.status_code == 404, forwarded
            assert "asgi_todo_http_requests" not in refused.text
    finally:
        server.stop()


@pytest.mark.process
@pytest.mark.parametrize("launcher", ["serve", "gunicorn"])
def test_forwarded_for_from_an_untrusted_peer_warns_once_and_counts(sqlite_url: str, launcher: str) -> None:
    """The misconfiguration alarm: the header is ignored (the peer stays the client), one
    warning names the peer, and a counter counts every such request."""
    env = server_env(sqlite_url, RESET_DB="1", FORWARDED_ALLOW_IPS="127.0.0.1", LOG_FORMAT="text")
    server = _start(launcher, env)
    try:
        for _ in range(3):
            assert _from("127.0.0.2", server, "/", **{"X-Forwarded-For": "203.0.113.7"}).status_code == 200
        # From the trusted proxy the header is believed: no alarm.
        assert _from("127.0.0.1", server, "/", **{"X-Forwarded-For": "203.0.113.8"}).status_code == 200
        metrics = _from("127.0.0.1", server, "/metrics").text
    finally:
        server.stop()
    assert "asgi_todo_forwarded_untrusted_total 3.0" in metrics
    warnings = [line for line in server.output().splitlines() if "X-Forwarded-For from" in line]
    assert len(warnings) == 1, warnings
    assert "127.0.0.2" in warnings[0]
    assert "FORWARDED_ALLOW_IPS" in warnings[0]
    access = server.output()
    assert "203.0.113.8" in access  # the trusted proxy's client
    assert "203.0.113.7" not in access  # an untrusted peer's claim
