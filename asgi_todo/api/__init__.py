"""The endpoints: each module ends in its list of operations, and this one joins them."""

from ..operations import Operation
from . import auth, meta, todos, users

OPERATIONS: list[Operation] = [*meta.OPERATIONS, *auth.OPERATIONS, *users.OPERATIONS, *todos.OPERATIONS]
