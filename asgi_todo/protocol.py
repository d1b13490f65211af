"""The HTTP/1.1 protocol our launchers give uvicorn: its httptools protocol, with bounded
request heads and only addresses in X-Forwarded-For.

uvicorn's httptools protocol accepts a request line and headers of any size, at any pace: one
connection sending a 64 MiB header holds a worker's event loop for seconds (httptools joins
a header's pieces, a cost that grows with the square of its size), and a client that sends
a header byte now and then holds its connection forever. Here a head (request line and
headers) over MAX_HEADER_BYTES gets a 431 and the connection closes before the parser sees
more; a head not complete within HEADER_TIMEOUT seconds of its first byte (or of the
connection) closes the connection. The limit holds per request; requests pipelined in one
read may each carry up to twice the limit.

X-Forwarded-For keeps only its entries that are IP addresses: uvicorn's proxy middleware,
which then picks the client from it for a trusted proxy (FORWARDED_ALLOW_IPS), would take any
text as the client address, and so as a login counter's key and the access log's client.

`asgi-todo serve` and the gunicorn workers use it; with plain uvicorn, pass
`--http asgi_todo.protocol:BoundedHeadProtocol`. The limits come from the environment, like
the settings of the app that servers build with `create_app()`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .context import PEER
from .settings import load_settings


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int
    timeout: float


@cache
def limits() -> HeadLimits:
    """This process's limits, read once (the launchers have validated the settings)."""
    settings = load_settings()
    return HeadLimits(settings.max_header_bytes, settings.header_timeout)


class BoundedHeadProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits()
        self._in_head = True  # between two requests, or in the request line and headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        if self._head_timer is None:
            self._arm_head_timer()
        # The parser sees at most what is left of the head's allowance; if the head is still
        # not complete after that, the rest is never parsed.
        room = self._limits.max_bytes - self._head_bytes
        head, rest = data[:room], data[room:]
        self._head_bytes += len(head)
        if head:
            super().data_received(head)
        if not rest or self.transport.is_closing():
            return
        if self._reading_head():  # the parser may have finished the head, and even the request
            self._refuse(431, "Request header fields too large")
        else:
            self.data_received(rest)

    def _reading_head(self) -> bool:
        return self._in_head

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The connecting peer, kept beside `client` (which uvicorn's proxy-headers middleware
        # replaces for a trusted proxy): /metrics access and the untrusted-proxy alarm need it.
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope[PEER] = self.client

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-forwarded-for":
            value = forwarded_addresses(value)
            if not value:
                return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self._limits.timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # the previous request is still being answered
        elif self._head_bytes:
            self._refuse(408, "Request header not received in time")
        else:
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.logger.warning("%s: %s", status, detail)
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def forwarded_addresses(value: bytes) -> bytes:
    """The entries of an X-Forwarded-For value that are IP addresses (with or without a
    port); anything else is no client address, and must not become a client key."""
    kept = [entry.strip() for entry in value.split(b",") if _is_address(entry.strip())]
    return b", ".join(kept)


def _is_address(entry: bytes) -> bool:
    text = entry.decode("latin-1")
    port = ""
    if text.startswith("["):  # [v6] or [v6]:port
        text, _, tail = text[1:].partition("]")
        if tail and not tail.startswith(":"):
            return False
        port = tail[1:]
    elif text.count(":") == 1:  # v4:port
        text, _, port = text.partition(":")
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
