"""asgi_todo without the per-request revocation check: for the benchmark only, to show what
the check costs (`python -m tests.bench.run --apps asgi_todo,asgi_todo-norevocation`,
`python -m tests.bench.stack --feature revocation`).

The caller is then read by its id alone, as `find_principal` reads a user: the join on
`logins` that makes a logout end its access tokens at once is left out. Never a setting of
the service: a switch that turns security off would one day be left off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.applications import Starlette

from asgi_todo import auth
from asgi_todo.app import create_app as create_service


@contextmanager
def caller_by_id() -> Iterator[None]:
    """While it lasts, the caller is read by the user's id alone (the same columns, in the
    same order); the token's login id, still passed as a parameter, is ignored."""
    saved = auth._CALLER, auth._CALLER_KEPT
    auth._CALLER, auth._CALLER_KEPT = auth._PRINCIPAL, auth._PRINCIPAL_KEPT
    try:
        yield
    finally:
        auth._CALLER, auth._CALLER_KEPT = saved


def create_app() -> Starlette:
    """The server's factory: this process never reads a caller's login."""
    caller_by_id().__enter__()
    return create_service()
