"""Every private or undocumented name of uvicorn, uvicorn-worker and gunicorn that asgi_todo
relies on, in one place: an upgrade that renames or removes one fails here, by name, before
anything else breaks in a less obvious way. setup.cfg caps uvicorn and uvicorn-worker below
their next minor version for the same reason. A new use of another project's internals adds
its line here.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import textwrap
from collections.abc import Iterator
from typing import Any

from uvicorn.server import ServerState

# (module, dotted name inside it, where we rely on it)
NAMES = [
    # asgi_todo/protocol.py: the bounded-head protocol is uvicorn's httptools protocol, subclassed.
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol", "protocol.BoundedHeadProtocol's base"),
    ("uvicorn.protocols.http.httptools_impl", "STATUS_LINE", "protocol: the refusal's status line"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.data_received", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_header", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_headers_complete", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_message_complete", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.connection_made", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.connection_lost", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_url", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_message_begin", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_body", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_response_complete", "protocol: overridden"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.send_400_response", "protocol: overridden"),
    ("uvicorn.server", "ServerState", "protocol's constructor"),
    # asgi_todo/drain.py: uvicorn's server, stopping later on SIGTERM.
    ("uvicorn.server", "Server.handle_exit", "drain.Server: overridden"),
    ("uvicorn.server", "Server.on_tick", "drain.Server: overridden"),
    # asgi_todo/gunicorn_conf.py: uvicorn-worker's worker, with our server and protocol.
    ("uvicorn_worker", "UvicornWorker.CONFIG_KWARGS", "gunicorn_conf.UvicornWorker: extended"),
    ("uvicorn_worker", "UvicornWorker._serve", "gunicorn_conf.UvicornWorker: replaced"),
    ("uvicorn_worker", "UvicornWorker._install_sigquit_handler", "gunicorn_conf.UvicornWorker._serve calls it"),
    ("uvicorn_worker", "UvicornWorker.run", "gunicorn_conf.UvicornWorker: overridden"),
    ("gunicorn.arbiter", "Arbiter.LISTENERS", "gunicorn_conf.on_starting binds the sockets itself"),
    ("gunicorn.arbiter", "Arbiter.WORKER_BOOT_ERROR", "gunicorn_conf.UvicornWorker._serve's exit status"),
    ("gunicorn.sock", "TCPSocket", "gunicorn_conf.listen"),
    ("gunicorn.sock", "TCP6Socket", "gunicorn_conf.listen"),
    ("gunicorn.sock", "UnixSocket", "gunicorn_conf.listen"),
    ("gunicorn.config", "Config.address", "gunicorn_conf.listen"),
    # asgi_todo/gunicorn_conf.py: gunicorn's logger, with our format.
    ("gunicorn.glogging", "Logger.setup", "gunicorn_conf.Logger: overridden"),
]

# Attributes set on instances, not classes: checked on an instance.
PROTOCOL_ATTRIBUTES = ("transport", "cycle", "loop", "server_state", "logger", "pipeline")
SERVER_ATTRIBUTES = ("should_exit", "started")
LOGGER_ATTRIBUTES = ("error_log", "access_log")
SERVER_STATE_ATTRIBUTES = ("default_headers",)

# gunicorn_conf.UvicornWorker._serve is this method with drain.Server in place of uvicorn's:
# when uvicorn-worker changes it, ours must follow.
UPSTREAM_SERVE = """\
async def _serve(self) -> None:
    self.config.app = self.wsgi
    server = Server(config=self.config)
    self._install_sigquit_handler()
    await server.serve(sockets=self.sockets)
    if not server.started:
        sys.exit(Arbiter.WORKER_BOOT_ERROR)
"""


def _missing_names() -> Iterator[str]:
    for module, dotted, where in NAMES:
        found: Any = importlib.import_module(module)
        for part in dotted.split("."):
            if not hasattr(found, part):
                yield f"{module}:{dotted} ({where})"
                break
            found = getattr(found, part)


def _missing_instance_attributes() -> Iterator[str]:
    from gunicorn.config import Config as GunicornConfig
    from gunicorn.glogging import Logger
    from uvicorn import Config, Server
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    config = Config(app="asgi_todo.app:create_app", factory=True)
    state = ServerState()
    loop = asyncio.new_event_loop()
    try:
        holders = (
            (HttpToolsProtocol(config, state, {}, loop), PROTOCOL_ATTRIBUTES),
            (Server(config), SERVER_ATTRIBUTES),
            (Logger(GunicornConfig()), LOGGER_ATTRIBUTES),
            (state, SERVER_STATE_ATTRIBUTES),
        )
        for holder, names in holders:
            yield from (f"{type(holder).__qualname__}.{name}" for name in names if not hasattr(holder, name))
    finally:
        loop.close()
    # protocol's head timer asks whether the response is complete, and a refusal in a pipeline
    # whether it started, marks it disconnected and wakes it; a cycle needs a live request to build.
    made = inspect.getsource(RequestResponseCycle.__init__)
    for name in ("response_complete", "response_started", "disconnected", "message_event"):
        if f"self.{name}" not in made:
            yield f"RequestResponseCycle.{name}"


def test_every_private_name_we_rely_on_is_there() -> None:
    from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

    missing = [*_missing_names(), *_missing_instance_attributes()]
    if textwrap.dedent(inspect.getsource(UvicornWorker._serve)) != UPSTREAM_SERVE:
        missing.append("uvicorn_worker.UvicornWorker._serve changed: update gunicorn_conf.UvicornWorker._serve")
    assert missing == []
