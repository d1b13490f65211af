"""Pure ASGI middleware, outermost first: client address, request id and access log, security
headers, errors, CORS, body limit, session scope, bearer decode (docs: Architecture)."""

from __future__ import annotations

import logging
import random
import re
import time
from collections import OrderedDict
from typing import Protocol

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors, security
from .context import BEARER, PEER, SESSION, Services, normalise_address, request_header
from .errors import PayloadTooLarge, json_response
from .logs import ACCESS_LOGGER, request_id, trace_id

access_logger = logging.getLogger(ACCESS_LOGGER)
proxy_logger = logging.getLogger("asgi_todo.proxy")

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class _HttpMiddleware:
    """Pure ASGI middleware that acts on HTTP requests and passes anything else (lifespan)
    straight through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ClientAddress(_HttpMiddleware):
    """Writes the client address one way (context.normalise_address) for everything after it,
    and raises the alarm when a peer that is not a trusted proxy sends X-Forwarded-For.

    The server (uvicorn's proxy-headers middleware, FORWARDED_ALLOW_IPS) has already put a
    trusted proxy's forwarded client in `client`; from any other peer it ignored the header,
    and `client` is still the peer itself (protocol.py keeps it as PEER). Behind a proxy that
    is not trusted every client shares the proxy's per-client counters: the warning names
    the peer, once an hour per peer, and `untrusted` counts every such request.
    """

    _WARN_EVERY = 3600.0
    _REMEMBER = 1024  # peers remembered as warned about: bounded, whatever connects

    def __init__(self, app: ASGIApp, *, untrusted: Counter | None = None) -> None:
        super().__init__(app)
        self.untrusted = untrusted
        self._warned: OrderedDict[str, float] = OrderedDict()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client:
            peer = scope.get(PEER)
            if peer is client and request_header(scope, b"x-forwarded-for") is not None:
                self._alarm(normalise_address(str(peer[0])))
            scope["client"] = (normalise_address(str(client[0])), client[1])
        await self.app(scope, receive, send)

    def _alarm(self, peer: str) -> None:
        if self.untrusted is not None:
            self.untrusted.inc()
        now = time.monotonic()
        last = self._warned.get(peer)
        if last is not None and now - last < self._WARN_EVERY:
            return
        self._warned[peer] = now
        self._warned.move_to_end(peer)
        if len(self._warned) > self._REMEMBER:
            self._warned.popitem(last=False)
        proxy_logger.warning(
            "X-Forwarded-For from %s ignored: it is not in FORWARDED_ALLOW_IPS, so the clients behind it"
            " share its per-client limits; if it is your proxy, add its address there (docs/proxies.md)."
            " Said once an hour for each address.",
            peer,
        )


class Counter(Protocol):
    """What counts the alarms (a prometheus_client Counter)."""

    def inc(self) -> None: ...


class Observer(Protocol):
    """What watches every request (metrics.Metrics): told when it arrives and when it is answered."""

    def begin(self, scope: Scope) -> None: ...
    def end(self, scope: Scope, status: int, seconds: float) -> None: ...


class RequestId(_HttpMiddleware):
    """Takes a sane `X-Request-ID` or makes one, echoes it, logs the request with it, and
    tells `observe` (the metrics) when given of its arrival, status and duration: one layer
    that times and counts a request, not two."""

    def __init__(self, app: ASGIApp, *, observe: Observer | None = None) -> None:
        super().__init__(app)
        self.observe = observe

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = request_header(scope, b"x-request-id") or b""
        # Not uuid4: os.urandom is a system call that lets the database threads take the GIL.
        rid = given if _REQUEST_ID.fullmatch(given) else b"%032x" % random.getrandbits(128)
        token = request_id.set(rid.decode())
        started = time.perf_counter()
        status = 499  # no response at all: the client went away first (nginx's 499)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        if self.observe is not None:
            self.observe.begin(scope)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if self.observe is not None:
                self.observe.end(scope, status, seconds)
            if access_logger.isEnabledFor(logging.INFO):
                _log_access(scope, status, seconds)
            request_id.reset(token)


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    client = scope.get("client") or ("-", 0)
    query = scope.get("query_string", b"")
    path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    extra: dict[str, object] = {"status": status, "duration_ms": round(seconds * 1000, 2)}
    trace = trace_id.get()
    if trace is not None:
        extra["trace_id"] = trace
    access_logger.info(
        '%s "%s %s HTTP/%s" %d %.1fms%s',
        client[0],
        scope["method"],
        path,
        scope.get("http_version", "1.1"),
        status,
        seconds * 1000,
        "" if trace is None else f" trace={trace}",
        extra=extra,
    )


_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
_NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders(_HttpMiddleware):
    """nosniff, no referrer, no framing, and a closed CSP unless the response sets its own
    (the docs page does); `Cache-Control: no-store` on every answer to a request that
    carried credentials, unless the response says otherwise."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        credentials = request_header(scope, b"authorization") is not None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [header for header in _SECURITY_HEADERS if header[0] not in present]
                if credentials and _NO_STORE[0] not in present:
                    headers.append(_NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --8<-- [start:errors]
class Errors(_HttpMiddleware):
    """Every exception becomes the JSON of errors.error_response; never a traceback."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            # The client left mid-body: nobody is there to answer, and nothing went wrong here.
            errors.logger.info("client disconnected before its request body was read")
            return
        except Exception as exc:
            if started:  # too late for a clean answer: the server closes the connection
                errors.logger.error("error after the response started in request %s", request_id.get(), exc_info=exc)
                raise
            await errors.error_response(exc, request_id=request_id.get())(scope, receive, send)


# --8<-- [end:errors]


class Cors(CORSMiddleware):
    """Starlette's CORS, with its refusal of a preflight in JSON like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        headers = {key: value for key, value in response.headers.items() if key.lower() != "content-length"}
        headers.pop("content-type", None)
        return json_response(400, {"detail": bytes(response.body).decode()}, headers)


class BodyLimit(_HttpMiddleware):
    """Refuses bodies over MAX_BODY_BYTES with a 413, whether announced or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = request_header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            raise PayloadTooLarge(f"Request body larger than {self.max_bytes} bytes")
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise PayloadTooLarge(f"Request body larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


# --8<-- [start:session-scope]
class SessionScope(_HttpMiddleware):
    """One SQLAlchemy session per request, closed when the request ends, whatever happened.

    The session connects only when a handler runs its unit of work (operations.Call.read
    or write), which commits or rolls back inside the same thread hop, before the
    response starts; closing here then returns nothing to the pool but a clean session.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["state"]["services"]
        with services.db.sessions() as session:
            scope[SESSION] = session
            await self.app(scope, receive, send)


# --8<-- [end:session-scope]


# --8<-- [start:bearer-decode]
class BearerDecode(_HttpMiddleware):
    """Decodes `Authorization: Bearer` once; operations decide whether they need it.

    A token already verified is remembered (a bounded map per process), so a client's
    requests after the first skip the signature check; expiry is checked every time.
    Revocation does not depend on this: the user's row and login are read on every request.
    """

    _REMEMBER = 4096

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self._verified: OrderedDict[str, security.Claims] = OrderedDict()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[BEARER] = self._bearer(scope)
        await self.app(scope, receive, send)

    def _bearer(self, scope: Scope) -> security.Claims | security.InvalidToken | None:
        value = request_header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._claims(scope, token.strip())

    def _claims(self, scope: Scope, token: str) -> security.Claims | security.InvalidToken:
        claims = self._verified.get(token)
        if claims is not None:
            if claims.expires_at > time.time():
                return claims
            del self._verified[token]
            return security.InvalidToken("expired")
        services: Services = scope["state"]["services"]
        try:
            claims = services.tokens.decode(token)
        except security.InvalidToken as exc:
            return exc
        self._verified[token] = claims
        if len(self._verified) > self._REMEMBER:
            self._verified.popitem(last=False)
        return claims


# --8<-- [end:bearer-decode]
