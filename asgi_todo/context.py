"""What every request shares: the services, the scope keys the middleware fills, header access.

The middleware writes these keys and the validation glue (`operations`) reads them; both
import this module, neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    from .security import TokenCodec
    from .settings import Settings

SESSION = "asgi_todo.session"  # scope key: the request's SQLAlchemy session (middleware.SessionScope)
BEARER = "asgi_todo.bearer"  # scope key: what middleware.BearerDecode found (a Bearer)

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
    metrics: Metrics | None = None  # None with METRICS=0


# --8<-- [start:require-claims]
def require_claims(bearer: Bearer) -> Claims:
    """The 401s of the contract: no token, or a token that does not check out."""
    if bearer is None:
        raise NotAuthenticated()
    if isinstance(bearer, InvalidToken):
        raise InvalidCredentials()
    return bearer


# --8<-- [end:require-claims]


def request_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (name in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            found: bytes = value
            return found
    return None
