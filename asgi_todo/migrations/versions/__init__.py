"""The revisions, oldest first by number. Write a new one with `asgi-todo db revision -m ...`."""
