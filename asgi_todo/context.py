"""What every request shares: the services, the scope keys the middleware fills, header access.

The middleware writes these keys and the validation glue (`operations`) reads them; both
import this module, neither imports the other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from starlette.types import Scope

from .errors import InvalidCredentials, NotAuthenticated
from .security import Claims, InvalidToken

if TYPE_CHECKING:
    from .auth import Passwords
    from .db import Database
    from .drain import Drain
    from .lockout import Limits
    from .metrics import Metrics
    from .readiness import ReadyCheck
    from .security import TokenCodec
    from .settings import Settings

SESSION = "asgi_todo.session"  # scope key: the request's SQLAlchemy session (middleware.SessionScope)
BEARER = "asgi_todo.bearer"  # scope key: what middleware.BearerDecode found (a Bearer)
# scope key: the connecting peer's (host, port), set by our HTTP protocol (protocol.py) before
# uvicorn's proxy-headers middleware replaces `client` with what a trusted proxy forwarded.
PEER = "asgi_todo.peer"

# What the bearer middleware leaves in the scope: nothing sent, the decoded claims, or why not.
Bearer = Claims | InvalidToken | None


@dataclass(frozen=True, slots=True)
class Services:
    """What the lifespan builds once and every request shares."""

    settings: Settings
    db: Database
    tokens: TokenCodec
    passwords: Passwords
    limits: Limits
    drain: Drain
    readiness: ReadyCheck
    metrics: Metrics | None = None  # None with METRICS=0


def require_claims(bearer: Bearer) -> Claims:
    """The 401s of the contract: no token, or a token that does not check out."""
    if bearer is None:
        raise NotAuthenticated()
    if isinstance(bearer, InvalidToken):
        raise InvalidCredentials()
    return bearer


def request_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (name in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            found: bytes = value
            return found
    return None


@lru_cache(maxsize=4096)
def normalise_address(host: str) -> str:
    """One spelling per address: IPv6 compressed and lower case, IPv4-mapped IPv6 as the IPv4
    address; anything that is no IP address (a unix socket, a test client's name) as given."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@lru_cache(maxsize=4096)
def client_key(host: str) -> str:
    """What the per-client limits (login, sign-up) and familiar addresses key on: an IPv4
    address, or an IPv6 address's /64, since one host commonly holds a whole /64 and would
    otherwise get 2**64 fresh counters."""
    normal = normalise_address(host)
    if ":" not in normal:
        return normal
    try:
        return str(ipaddress.IPv6Network(f"{normal}/64", strict=False))
    except ValueError:
        return normal


def peer_address(scope: Scope) -> str | None:
    """The connecting peer's address, normalised, never what X-Forwarded-For says; None when
    unknown (a server that is not ours rewrote `client` from X-Forwarded-For)."""
    peer = scope.get(PEER)
    if peer is None:
        if request_header(scope, b"x-forwarded-for") is not None:
            return None
        peer = scope.get("client")
    return normalise_address(str(peer[0])) if peer else None
