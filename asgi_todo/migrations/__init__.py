"""Alembic's environment and the revisions; `asgi_todo.migrate` runs them."""
