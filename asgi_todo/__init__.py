"""asgi_todo: the FastAPI todo example API, hand-written on Starlette."""

__version__ = "1.0.0"
