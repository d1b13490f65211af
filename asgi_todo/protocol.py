"""The HTTP/1.1 protocol our launchers give uvicorn: its httptools protocol, with bounded
request heads and trailers, bodies that must keep moving, refusals in pipeline order, and only
addresses in X-Forwarded-For (docs/protocol-limits.md).

uvicorn's httptools protocol accepts a request line and headers of any size, at any pace: one
connection sending a 64 MiB header holds a worker's event loop for seconds (httptools joins
a header's pieces, a cost that grows with the square of its size), and a client that sends
a header byte now and then holds its connection forever. Here a head (request line and
headers) over MAX_HEADER_BYTES gets a 431 and the connection closes before the parser sees
more; a head not complete within HEADER_TIMEOUT seconds of its first byte (or of the
connection) closes the connection. The limit holds per request; requests pipelined in one
read may each carry up to twice the limit.

A chunked body ends with trailer fields, which the parser gathers the same way: they count
towards the same MAX_HEADER_BYTES as the head they follow (and are never handed to the app,
which ASGI gives no way to read them), and the parser never sees more than that much of a
chunked body without payload. A body with no byte for BODY_TIMEOUT seconds closes the
connection (408 if no answer has started), and so does one slower than BODY_MIN_RATE: as in
Apache's mod_reqtimeout, a body has BODY_TIMEOUT seconds and one more for each BODY_MIN_RATE
bytes received, so a client dripping a byte now and then is closed after about BODY_TIMEOUT.

A refusal (431, 408, or the parser's 400) answers the request it is about: requests pipelined
before it are answered first, in order, then the refusal, then the connection closes. Sent at
once, it would read as the answer to an earlier request that the app may well have carried out.

X-Forwarded-For keeps only its entries that are IP addresses: uvicorn's proxy middleware,
which then picks the client from it for a trusted proxy (FORWARDED_ALLOW_IPS), would take any
text as the client address, and so as a login counter's key and the access log's client.

`asgi-todo serve` and the gunicorn workers use it; with plain uvicorn, pass
`--http asgi_todo.protocol:BoundedHeadProtocol`. The limits come from the environment, like
the settings of the app that servers build with `create_app()`.

Besides the methods the parser calls, this leans on these names of uvicorn's protocol, none of
them documented: `cycle` (the newest request's `RequestResponseCycle`, with its
`response_started`, `disconnected` and `message_event`), `pipeline`, `on_response_complete`,
`send_400_response`, `server_state.default_headers` and `STATUS_LINE`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .context import PEER
from .settings import load_settings

TOO_LARGE = (431, "Request header fields too large")
HEAD_TOO_SLOW = (408, "Request header not received in time")
BODY_TOO_SLOW = (408, "Request body not received in time")
_FIELD_FRAMING = len(b": \r\n")


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int
    timeout: float
    body_timeout: float
    body_min_rate: int  # bytes a second; 0: no rate


@cache
def limits() -> HeadLimits:
    """This process's limits, read once (the launchers have validated the settings)."""
    settings = load_settings()
    return HeadLimits(settings.max_header_bytes, settings.header_timeout, settings.body_timeout, settings.body_min_rate)


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
        # In the head: the bytes of it fed so far. After it: the head's parsed size plus the
        # trailer fields so far, the budget that a chunked body's trailer shares.
        self._head_bytes = 0
        self._parsed = 0  # the request line's target and header fields parsed so far
        self._chunked = False
        self._body_left = 0  # of a Content-Length body, the bytes the parser has not had yet
        self._quiet = 0  # bytes of a chunked body fed since the parser last gave payload or a field
        self._moved = False
        self._unanswered = 0  # requests handed to the app whose answer has not ended
        self._refusal: bytes | None = None  # the answer waiting for the answers before it
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0  # when a byte of the body last came
        self._body_due = 0.0  # when the body must be in at BODY_MIN_RATE (later with each byte)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and self._reading():
            data = self._feed_head(data) if self._in_head else self._feed_body(data)
        if not self._in_head and self._body_timer is None and self._reading():
            self._body_timer = self.loop.call_later(self._limits.body_timeout, self._body_timed_out)

    def _reading(self) -> bool:
        """Whether this protocol still reads the connection: not refusing a request, not
        closing, and not handed over to a WebSocket protocol."""
        return self._refusal is None and not self.transport.is_closing() and self.transport.get_protocol() is self

    def _feed_head(self, data: bytes) -> bytes:
        """Feed the parser at most what is left of the head's allowance; what it has not
        taken is returned. A head still not complete at the limit is never parsed further."""
        if self._head_timer is None:
            self._arm_head_timer()
        room = self._limits.max_bytes - self._head_bytes
        if room <= 0:
            self._refuse(*TOO_LARGE)
            return b""
        self._head_bytes += min(room, len(data))
        super().data_received(data[:room])
        return data[room:]

    def _feed_body(self, data: bytes) -> bytes:
        """Feed the parser the body, and nothing past it: a Content-Length body up to its
        length, a chunked one in pieces no larger than what the trailer may still take."""
        self._body_at = self.loop.time()
        if not self._chunked:
            size = self._body_left if self._body_left > 0 else len(data)
            self._received(min(size, len(data)))
            super().data_received(data[:size])
            return data[size:]
        room = self._limits.max_bytes - self._head_bytes - self._quiet
        if room <= 0:
            self._refuse(*TOO_LARGE)
            return b""
        self._received(min(room, len(data)))
        self._moved = False
        super().data_received(data[:room])
        self._quiet = 0 if self._moved else self._quiet + min(room, len(data))
        return data[room:]

    def _received(self, size: int) -> None:
        """`size` more bytes of the body: each BODY_MIN_RATE of them buys it a second."""
        if self._limits.body_min_rate:
            self._body_due += size / self._limits.body_min_rate

    def on_url(self, url: bytes) -> None:
        self._parsed += len(url)
        super().on_url(url)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The connecting peer, kept beside `client` (which uvicorn's proxy-headers middleware
        # replaces for a trusted proxy): /metrics access and the untrusted-proxy alarm need it.
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope[PEER] = self.client
        self._parsed = 0
        self._chunked = False
        self._body_left = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _FIELD_FRAMING
        if not self._in_head:  # a trailer field: counted with the head, and not given to the app
            self._moved = True
            self._head_bytes += size
            if self._head_bytes > self._limits.max_bytes:
                self._refuse(*TOO_LARGE)
            return
        self._parsed += size
        lowered = name.lower()
        if lowered == b"x-forwarded-for":
            value = forwarded_addresses(value)
            if not value:
                return
        elif lowered == b"transfer-encoding":
            self._chunked = True
        elif lowered == b"content-length":
            self._body_left = int(value)  # the parser has checked it
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refusal is not None or self.transport.is_closing():
            return  # a request after a refused one (in the same read) is never started
        self._in_head = False
        self._disarm_head_timer()
        self._head_bytes = self._parsed
        self._quiet = 0
        self._body_at = self.loop.time()
        self._body_due = self._body_at + self._limits.body_timeout if self._limits.body_min_rate else math.inf
        earlier = self.cycle
        super().on_headers_complete()
        if self.cycle is not earlier:
            self._unanswered += 1

    def on_body(self, body: bytes) -> None:
        self._moved = True
        self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._disarm_body_timer()

    def on_response_complete(self) -> None:
        self._unanswered -= 1
        super().on_response_complete()
        if self._refusal is not None and not self._unanswered:
            self._send_refusal()

    def send_400_response(self, msg: str) -> None:
        """The parser's 400 (uvicorn has logged it), in JSON and in pipeline order."""
        self._answer_refused(400, msg)

    def _refuse(self, status: int, detail: str) -> None:
        if self._refusal is None and not self.transport.is_closing():
            self.logger.warning("%s: %s", status, detail)
        self._answer_refused(status, detail)

    def _answer_refused(self, status: int, detail: str) -> None:
        """Answer the request being read with `status` once every request before it has been
        answered, then close. Nothing more is parsed meanwhile."""
        if self._refusal is not None or self.transport.is_closing():
            return
        self._disarm_timers()
        if not self._in_head:  # its head went to the app already
            cycle = self.cycle
            if cycle.response_started:  # the app is answering it (or has): nothing more can be said
                self.transport.close()
                return
            cycle.disconnected = True  # its app reads a disconnect, and what it sends is dropped
            cycle.message_event.set()
            self._unanswered -= 1
            for queued in self.pipeline:  # not started yet: it never will be
                if queued[0] is cycle:
                    self.pipeline.remove(queued)
                    break
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self._refusal = b"".join(head) + body
        if not self._unanswered:
            self._send_refusal()
        elif self.transport.is_reading():
            self.transport.pause_reading()  # what comes after the refused request is never read

    def _send_refusal(self) -> None:
        if self._refusal is not None and not self.transport.is_closing():
            self.transport.write(self._refusal)
            self.transport.close()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self._limits.timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _disarm_timers(self) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._unanswered:
            self._arm_head_timer()  # the previous request is still being answered
        elif self._head_bytes:
            self._refuse(*HEAD_TOO_SLOW)
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._reading():
            return
        now = self.loop.time()
        if not self.transport.is_reading():  # the server holds the body back (flow control), not the client
            self._body_at = now
            self._body_due = max(self._body_due, now + self._limits.body_timeout)
        due = min(self._body_at + self._limits.body_timeout, self._body_due)  # no progress, or too slow
        if now < due:
            self._body_timer = self.loop.call_later(due - now, self._body_timed_out)
        else:
            self._refuse(*BODY_TOO_SLOW)


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
