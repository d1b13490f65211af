"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header-06) on the operations that
declare `idempotent=True`: a retried POST gets the first one's response, and writes nothing.

Each write of a keyed request runs with the key (docs/retries.md tells clients what they see):

1. `Keyed.claim` opens the write's transaction: the caller's key is taken for it
   (PostgreSQL: a transaction-level advisory lock, tried without waiting, so a retry while the
   first is in flight is a 409; SQLite: the write lock every write takes at BEGIN), then
   looked up: a stored answer is replayed (`Replayed` rolls the write back), another
   request's key is a 422, a key held by a request in flight a 409.
2. `Keyed.store`, when the write returned the request's Reply: the rendered response is stored
   with the key, so the new row and its key commit together or not at all.
3. `Keyed.hold`, when it did not (a sign-up's count, before its password is hashed): the key
   is reserved for the write to come, for LEASE_SECONDS; a request that then fails releases
   it. Only then can a key outlive a failure: its holder's process or database died before
   the answer, and a retry waits for the lease. A create, one write, never holds its key.
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

from sqlalchemy import delete, func, insert, select, update
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
# How long a reservation (Keyed.hold) holds its key without an answer: a retry
# meanwhile is a 409; after it, the holder is taken to be dead and a retry runs afresh.
LEASE_SECONDS = 10
ERRORS = (400, 409, 422)  # malformed key; first request in flight; key used for another request
PURGE_BATCH = 100  # expired keys deleted per stored key, oldest first, through their index

_HEADER = HEADER.lower().encode()
# RFC 8941 sf-string: printable ASCII in double quotes, `\"` and `\\` escaped. A bare token,
# as some clients send (Stripe's style), is the same key as its quoted form.
_QUOTED_CHAR = r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])'
_BARE_CHAR = r"[A-Za-z0-9._~:/+=*-]"
_SF_STRING = re.compile(rf'"({_QUOTED_CHAR}*)"')
_BARE = re.compile(rf"{_BARE_CHAR}+")
# What request_key accepts, as one pattern (the OpenAPI document's): 1 to 255 characters.
PATTERN = rf'^(?:"{_QUOTED_CHAR}{{1,{IDEMPOTENCY_KEY_MAX}}}"|{_BARE_CHAR}{{1,{IDEMPOTENCY_KEY_MAX}}})$'
_ESCAPE = re.compile(r"\\([\"\\])")
_IN_FLIGHT = "A request with this Idempotency-Key is still being processed; retry after Retry-After seconds."
_REUSED = "This Idempotency-Key was used for a different request (method, path or body)."

# Test-only: the path of a file; the first worker to remove it kills itself (SIGKILL) right
# after a keyed write commits and before its response (tests/test_idempotency_races.py).
_KILL_AFTER_COMMIT = os.environ.get("ASGI_TODO_TEST_KILL_AFTER_COMMIT")


def keyed(call: AnyCall, *, key: str, body: bytes, render: Callable[[Any], Response]) -> Keyed:
    """The key of an operation's request, owned by its caller: the user, else the client
    address as the sign-up limit keys it."""
    settings = call.services.settings
    method, path = call.operation.method, call.operation.full_path(settings.api_prefix)
    return Keyed(
        caller=f"user:{call.claims.user_id}" if call.claims is not None else f"client:{call.client_address}",
        key=key,
        fingerprint=fingerprint(call.services.tokens.key, method=method, path=path, body=body),
        ttl=timedelta(seconds=settings.idempotency_ttl),
        render=render,
    )


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


class Replayed(Exception):
    """A keyed write found its answer already stored: its transaction rolls back, and the
    stored response answers the request."""

    def __init__(self, stored: Stored) -> None:
        super().__init__("replayed")
        self.stored = stored


class Keyed:
    """A request's key: each of its writes claims it first; the write returning its Reply
    stores the answer with it, and one that does not holds it for the next (operations.Call)."""

    __slots__ = ("_render", "_reserved", "caller", "fingerprint", "key", "response", "ttl")

    def __init__(
        self, *, caller: str, key: str, fingerprint: str, ttl: timedelta, render: Callable[[Any], Response]
    ) -> None:
        self.caller = caller
        self.key = key
        self.fingerprint = fingerprint
        self.ttl = ttl
        self._render = render
        self._reserved: tuple[int, str] | None = None  # (row id, token) of a committed reservation
        self.response: Response | None = None  # once stored

    @property
    def held(self) -> bool:
        """Whether a write of this request committed a reservation of the key (`hold`)."""
        return self._reserved is not None

    def release(self, session: Session) -> None:
        """After the request failed, its committed reservation goes, so that a retry runs again."""
        if self._reserved is None:
            return
        row_id, token = self._reserved
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id == row_id, IdempotencyKey.token == token, IdempotencyKey.status.is_(None)
            )
        )

    def claim(self, session: Session) -> None:
        """The key for this transaction, before its write; Replayed when it holds an answer.
        Nothing to do when this request holds it already (`hold`).

        PostgreSQL: two requests with one key, in flight at once, would both find no answer;
        the advisory lock lets one through and makes the other a 409 without waiting. SQLite
        needs none: its write lock, taken at BEGIN, lets one write at a time."""
        if self._reserved is not None:
            return
        postgresql = session.get_bind().dialect.name == "postgresql"
        if postgresql and not session.scalar(select(func.pg_try_advisory_xact_lock(self._lock_id()))):
            raise Conflict(_IN_FLIGHT, headers={"Retry-After": "1"})
        row = session.execute(
            select(
                IdempotencyKey.id,
                IdempotencyKey.fingerprint,
                IdempotencyKey.locked_until,
                IdempotencyKey.expires_at,
                IdempotencyKey.status,
                IdempotencyKey.body,
                IdempotencyKey.location,
                IdempotencyKey.etag,
            ).where(IdempotencyKey.caller == self.caller, IdempotencyKey.key == self.key)
        ).first()
        if row is None:
            return
        now = utcnow()
        if row.expires_at > now:
            if not hmac.compare_digest(row.fingerprint, self.fingerprint):
                raise ValidationFailed([validation_issue("idempotency_key_reused", ["header", HEADER], _REUSED)])
            if row.status is not None:
                raise Replayed(Stored(row.status, row.body, row.location, row.etag))
            if row.locked_until is not None and row.locked_until > now:
                # A second, not the lease's end: the first request most likely answers soon.
                raise Conflict(_IN_FLIGHT, headers={"Retry-After": "1"})
        # Expired, or reserved by a request whose process died: this request runs afresh.
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row.id))

    def hold(self, session: Session) -> None:
        """After a write that did not answer the request: the key held past its transaction,
        by a request with more to do before the write
        that answers it (a sign-up: counted, then its password hashed, then stored): a retry
        meanwhile is a 409, until the lease runs out."""
        if self._reserved is not None:
            return
        now = utcnow()
        token = secrets.token_hex(16)
        row_id = session.execute(
            insert(IdempotencyKey)
            .values(
                caller=self.caller,
                key=self.key,
                fingerprint=self.fingerprint,
                token=token,
                locked_until=now + timedelta(seconds=LEASE_SECONDS),
                expires_at=now + self.ttl,
            )
            .returning(IdempotencyKey.id)
        ).scalar_one()
        self._reserved = (row_id, token)

    def store(self, session: Session, result: Any) -> None:
        """The handler's answer, rendered, stored with the key in its write's transaction;
        into the request's reservation only while it is still this request's (a holder
        slower than its lease may have lost it to a retry, and then must not commit: a 409)."""
        if self.response is not None:
            raise RuntimeError("a keyed request stores one answer: two of its writes returned a Reply")
        response = self._render(result)
        now = utcnow()
        answer = {
            "status": response.status_code,
            "body": bytes(response.body).decode() if response.body else None,
            "location": response.headers.get("location"),
            "etag": response.headers.get("etag"),
            "locked_until": None,
            "expires_at": now + self.ttl,
        }
        if self._reserved is None:
            mine = {"caller": self.caller, "key": self.key, "fingerprint": self.fingerprint}
            session.execute(insert(IdempotencyKey).values(token=secrets.token_hex(16), **mine, **answer))
        else:
            row_id, token = self._reserved
            stored = session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row_id, IdempotencyKey.token == token)
                .values(**answer)
                .returning(IdempotencyKey.id)
            ).first()
            if stored is None:
                raise Conflict(_IN_FLIGHT, headers={"Retry-After": "1"})
        purge(session, now=now)
        self.response = response

    def _lock_id(self) -> int:
        """The advisory lock's 64-bit key: a hash of caller and key (another key's lock shares
        it once in 2**64, and then costs a needless 409, never a wrong answer)."""
        digest = hashlib.blake2b(f"{self.caller}\0{self.key}".encode(), digest_size=8, person=b"asgi-todo-idem")
        return int.from_bytes(digest.digest(), "big", signed=True)


async def release_for(call: AnyCall, failure: Exception) -> None:
    """After the handler failed, its committed reservation goes, so that a retry runs again.
    Not when the database is unavailable: the lease runs out instead, and the 503 goes now."""
    keyed, call.idempotency = call.idempotency, None
    if keyed is None or not keyed.held or isinstance(failure, ServiceUnavailable):
        return  # nothing held past a transaction: the failed write rolled its claim back
    try:
        await call.write(keyed.release)
    except Exception:
        logger.warning("could not release an Idempotency-Key after a failure", exc_info=True)


def purge(session: Session, *, now: datetime, batch: int = PURGE_BATCH) -> int:
    """Delete up to `batch` expired keys, found through the index on expires_at: a small,
    bounded piece of work with each stored key instead of a scan of the whole table.

    SKIP LOCKED (PostgreSQL): concurrent purges take disjoint rows and never wait, so a
    purge never makes a write wait, nor waits in a cycle with one (a deadlock)."""
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
