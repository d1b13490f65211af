"""asgi_todo without the per-request revocation check: for the benchmark only, to show what
the check costs (`python -m tests.bench.run --apps asgi_todo,asgi_todo-norevocation`).

The caller is then read by its id alone, as `find_principal` reads a user: the join on
`logins` that makes a logout end its access tokens at once is left out. Never a setting of
the service: a switch that turns security off would one day be left off.
"""

from __future__ import annotations

from starlette.applications import Starlette

from asgi_todo import auth
from asgi_todo.app import create_app as create_service


def create_app() -> Starlette:
    # The same columns in the same order, by the user's id only; the token's login id,
    # still passed as a parameter, is then ignored.
    auth._CALLER = auth._PRINCIPAL
    auth._CALLER_KEPT = auth._PRINCIPAL_KEPT
    return create_service()
