"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header-06) on the operations that
declare `idempotent=True`: a retried POST gets the first one's response, and writes nothing.

A request with a key goes through three steps (docs/retries.md tells clients what they see):

1. `reserve`, a short transaction of its own: the key's row is inserted for the caller, with a
   fingerprint of the request and a lease (`locked_until`). A row already there answers
   instead: the stored response (a replay), 422 (another request's key), 409 (in flight).
2. The handler's write runs with `Pending.complete` in its transaction: the rendered response
   is stored in the key's row, so the write and its key commit together or not at all.
3. A handler that fails releases its reservation, so a retry runs again.

A reservation whose holder died before its commit is taken over once its lease has run out;
`complete` stores only if the reservation is still this request's, so a slow holder and the
retry that took over can never both write.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from starlette.responses import Response

from .errors import BadRequest, Conflict, ServiceUnavailable, ValidationFailed, validation_issue
from .limits import IDEMPOTENCY_KEY_MAX
from .models import IdempotencyKey, utcnow

if TYPE_CHECKING:
    from .operations import AnyCall

logger = logging.getLogger("asgi_todo.idempotency")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # on a replayed response: "true"
HEADER_DESCRIPTION = (
    "A unique value per intended request (a UUID), sent again unchanged with each retry of it"
    " (draft-ietf-httpapi-idempotency-key-header-06): a retry gets the first response again, with"
    " `Idempotent-Replayed: true`, and writes nothing. Keys are the caller's own and kept for"
    " IDEMPOTENCY_TTL. 400: malformed or longer than 255 characters; 409: the first request is still"
    " in flight; 422: the key was used for a different request."
)
REPLAYED_DESCRIPTION = "`true` when this is the stored response of an earlier request with the same Idempotency-Key."
# How long a reservation holds its key without an answer: a retry meanwhile is a 409; after
# it, the holder is taken to be dead (killed before its commit) and a retry runs afresh.
LEASE_SECONDS = 10
ERRORS = (400, 409, 422)  # malformed key; first request in flight; key used for another request
PURGE_BATCH = 100  # expired keys deleted per reservation, oldest first, through their index

_HEADER = HEADER.lower().encode()
# RFC 8941 sf-string: printable ASCII in double quotes, `\"` and `\\` escaped. A bare token,
# as some clients send (Stripe's style), is the same key as its quoted form.
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_BARE = re.compile(r"[A-Za-z0-9._~:/+=*-]+")
_ESCAPE = re.compile(r"\\([\"\\])")
_IN_FLIGHT = "A request with this Idempotency-Key is still being processed; retry after Retry-After seconds."
_REUSED = "This Idempotency-Key was used for a different request (method, path or body)."

# Test-only: the path of a file; the first worker to remove it kills itself (SIGKILL) right
# after a keyed write commits and before its response (tests/test_idempotency_races.py).
_KILL_AFTER_COMMIT = os.environ.get("ASGI_TODO_TEST_KILL_AFTER_COMMIT")


async def reserve_for(call: AnyCall, *, key: str, body: bytes, render: Callable[[Any], Response]) -> Pending | Stored:
    """Step 1 for an operation's request: the key reserved for its caller (the user, else the
    client address as the sign-up limit keys it), or the answer already stored."""
    settings = call.services.settings
    method, path = call.operation.method, call.operation.full_path(settings.api_prefix)
    return await call.write(
        reserve,
        caller=f"user:{call.claims.user_id}" if call.claims is not None else f"client:{call.client_address}",
        key=key,
        fingerprint=fingerprint(call.services.tokens.key, method=method, path=path, body=body),
        ttl=timedelta(seconds=settings.idempotency_ttl),
        render=render,
    )


async def release_for(call: AnyCall, failure: Exception) -> None:
    """Step 3: after the handler failed, its reservation goes, so that a retry runs again.
    Not when the database is unavailable: the lease runs out instead, and the 503 goes now."""
    pending, call.idempotency = call.idempotency, None
    if pending is None or isinstance(failure, ServiceUnavailable):
        return
    try:
        await call.write(pending.release)
    except Exception:
        logger.warning("could not release an Idempotency-Key after a failure", exc_info=True)


def request_key(scope: Any) -> str | None:
    """The request's Idempotency-Key, or None without one; a 400 when malformed."""
    values = [value for name, value in scope["headers"] if name == _HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{HEADER} must be sent once")
    raw = values[0].decode("latin-1").strip()
    quoted = _SF_STRING.fullmatch(raw)
    if quoted is not None:
        key = _ESCAPE.sub(r"\1", quoted[1])
    elif _BARE.fullmatch(raw):
        key = raw
    else:
        raise BadRequest(f'{HEADER} must be a quoted string of printable ASCII, e.g. "8e03978e-40d5-43e8"')
    if not key:
        raise BadRequest(f"{HEADER} must not be empty")
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise BadRequest(f"{HEADER} must be at most {IDEMPOTENCY_KEY_MAX} characters")
    return key


def fingerprint(secret: str, *, method: str, path: str, body: bytes) -> str:
    """What makes two requests the same. Keyed (HMAC), because a sign-up's body holds a
    password: a stored plain hash of it would be far cheaper to guess than its bcrypt hash."""
    digest = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    """A response stored with its key, to be sent again."""

    status: int
    body: str | None
    location: str | None
    etag: str | None

    def response(self) -> Response:
        headers = {REPLAYED: "true"}
        if self.location is not None:
            headers["Location"] = self.location
        if self.etag is not None:
            headers["ETag"] = self.etag
        if self.body is None:
            return Response(status_code=self.status, headers=headers)
        return Response(self.body, self.status, headers, media_type="application/json")


class Pending:
    """This request's reservation of its key, until its response is stored with its write."""

    __slots__ = ("_render", "_ttl", "response", "row_id", "token")

    def __init__(self, row_id: int, token: str, *, ttl: timedelta, render: Callable[[Any], Response]) -> None:
        self.row_id = row_id
        self.token = token
        self._ttl = ttl
        self._render = render
        self.response: Response | None = None

    def complete(self, session: Session, result: Any) -> Response:
        """Store the handler's answer, rendered, in the transaction of its write (`session`'s).

        Only while the reservation is still ours: a holder slower than its lease may have lost
        it to a retry, and then this write must not commit (a 409, rolled back)."""
        response = self._render(result)
        stored = session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == self.row_id, IdempotencyKey.token == self.token)
            .values(
                status=response.status_code,
                body=bytes(response.body).decode() if response.body else None,
                location=response.headers.get("location"),
                etag=response.headers.get("etag"),
                locked_until=None,
                expires_at=utcnow() + self._ttl,
            )
            .returning(IdempotencyKey.id)
        ).first()
        if stored is None:
            raise Conflict(_IN_FLIGHT, headers={"Retry-After": "1"})
        self.response = response
        return response

    def release(self, session: Session) -> None:
        """Give the key back after a failure, so that a retry runs again. Never an answered key."""
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id == self.row_id, IdempotencyKey.token == self.token, IdempotencyKey.status.is_(None)
            )
        )


def reserve(
    session: Session,
    *,
    caller: str,
    key: str,
    fingerprint: str,
    ttl: timedelta,
    render: Callable[[Any], Response],
) -> Pending | Stored:
    """Reserve the caller's key for this request, or answer from the row already there."""
    now = utcnow()
    token = secrets.token_hex(16)
    fresh = {"fingerprint": fingerprint, "token": token, "locked_until": now + timedelta(seconds=LEASE_SECONDS)}
    for _ in range(3):  # a row found by the insert may be purged or released before it is read
        # The race of concurrent first requests with one key (tests/test_idempotency_races.py,
        # test_twenty_identical_*): the unique (caller, key) lets one INSERT in. The others
        # wait for its transaction (PostgreSQL: on the unique index; SQLite: BEGIN IMMEDIATE's
        # write lock), then insert nothing and read its row below.
        inserted = session.execute(
            _insert(session)
            .values(caller=caller, key=key, expires_at=now + ttl, **fresh)
            .on_conflict_do_nothing(index_elements=["caller", "key"])
            .returning(IdempotencyKey.id)
        ).scalar()
        if inserted is not None:
            purge(session, now=now)
            return Pending(inserted, token, ttl=ttl, render=render)
        # FOR UPDATE (PostgreSQL): two retries taking over one expired reservation queue here.
        row = session.execute(
            select(IdempotencyKey).where(IdempotencyKey.caller == caller, IdempotencyKey.key == key).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            continue
        if row.expires_at > now:
            if not hmac.compare_digest(row.fingerprint, fingerprint):
                raise ValidationFailed([validation_issue("idempotency_key_reused", ["header", HEADER], _REUSED)])
            if row.status is not None:
                return Stored(row.status, row.body, row.location, row.etag)
            if row.locked_until is not None and row.locked_until > now:
                # A second, not the lease's end: the first request most likely answers in
                # milliseconds; only one that died holds the key until its lease runs out.
                raise Conflict(_IN_FLIGHT, headers={"Retry-After": "1"})
        # An expired key, or a reservation whose holder died: this request takes it over.
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == row.id)
            .values(expires_at=now + ttl, status=None, body=None, location=None, etag=None, **fresh)
        )
        purge(session, now=now)
        return Pending(row.id, token, ttl=ttl, render=render)
    raise Conflict(_IN_FLIGHT, headers={"Retry-After": "1"})


def purge(session: Session, *, now: datetime, batch: int = PURGE_BATCH) -> int:
    """Delete up to `batch` expired keys, found through the index on expires_at: a small,
    bounded piece of work on each new reservation instead of a scan of the whole table.

    After the reservation's own row, and SKIP LOCKED (PostgreSQL): concurrent purges take
    disjoint rows and never wait, so a reservation waits at most for another one's INSERT,
    never in a cycle of two (a deadlock)."""
    expired = (
        select(IdempotencyKey.id)
        .where(IdempotencyKey.expires_at <= now)
        .order_by(IdempotencyKey.expires_at)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.id.in_(expired.limit(batch).scalar_subquery()))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(IdempotencyKey)


def after_commit() -> None:
    """The test-only crash point: see _KILL_AFTER_COMMIT."""
    if _KILL_AFTER_COMMIT is None:
        return
    try:
        os.unlink(_KILL_AFTER_COMMIT)
    except FileNotFoundError:
        return
    logger.warning("test crash point: killing this worker after its commit")
    os.kill(os.getpid(), signal.SIGKILL)
