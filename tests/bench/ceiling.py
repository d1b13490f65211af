"""The ceiling: a bare ASGI callable answering the benchmark's scenarios with the least work.

No framework, no ORM, no validation library: driver-level SQL (sqlite3 on the event loop,
psycopg's async connections on PostgreSQL), JSON bytes from `json.dumps`, HS256 checked
with `hmac` against the same key, bcrypt in one thread per core (asgi_todo's own password
functions: the check is the same bcrypt work whoever writes it). It shows what the
machine allows; it answers only the benchmark's operations (health, list, get, create and
patch a todo, me, the password grant), from the environment asgi_todo reads
(DATABASE_URL, SECRET_KEY, API_PREFIX, ACCESS_TOKEN_EXPIRE_MINUTES, BCRYPT_ROUNDS).

Run it like the others: `uvicorn --factory tests.bench.ceiling:create_app`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl

import psycopg

from asgi_todo.security import hash_password, verify_password

Scope = dict[str, Any]
Message = dict[str, Any]
Row = Sequence[Any]

NAME = "ceiling"
VERSION = "1"
TEXT_MAX = 1000
INT_MAX = 2**31 - 1
_JSON = (b"content-type", b"application/json")
_BEARER = (b"www-authenticate", b"Bearer")
_NO_STORE = (b"cache-control", b"no-store")

_TODO = "t.id, t.text, t.completed, t.owner_id, {ts:t.created_at}, {ts:t.updated_at}"
_USER = "u.id, u.email, u.fname, u.lname, u.is_superuser, {ts:u.created_at}, {ts:u.updated_at}"
_TODO_KEYS = ("id", "text", "completed", "owner_id", "created_at", "updated_at")
_USER_KEYS = ("id", "email", "fname", "lname", "is_superuser", "created_at", "updated_at")
# One statement per operation, written for PostgreSQL; `_dialect` fills the {placeholders}:
# {ts:column} becomes an ISO 8601 UTC string made by the database.
_SQL = {
    "ping": "SELECT 1",
    "caller": "SELECT is_superuser FROM users WHERE id = %s",
    "me": "SELECT {user} FROM users u WHERE u.id = %s",
    "count_own": "SELECT count(*) FROM todos WHERE owner_id = %s",
    "count_all": "SELECT count(*) FROM todos",
    "list_own": "SELECT {todo} FROM todos t WHERE t.owner_id = %s ORDER BY t.id LIMIT %s OFFSET %s",
    "list_all": "SELECT {todo} FROM todos t ORDER BY t.id LIMIT %s OFFSET %s",
    "get": "SELECT {todo}, {user} FROM todos t JOIN users u ON u.id = t.owner_id WHERE t.id = %s"
    " AND (t.owner_id = %s OR EXISTS (SELECT 1 FROM users s WHERE s.id = %s AND s.is_superuser))",
    "create": "INSERT INTO todos (text, completed, owner_id, created_at, updated_at{version})"
    " SELECT %s, %s, id, %s, %s{one} FROM users WHERE id = %s RETURNING id, text, completed, owner_id,"
    " {ts:created_at}, {ts:updated_at}",
    "patch": "UPDATE todos SET text = COALESCE(%s, text), completed = COALESCE(%s, completed), updated_at = %s"
    "{bump} WHERE id = %s AND owner_id = %s RETURNING id, text, completed, owner_id,"
    " {ts:created_at}, {ts:updated_at}",
    "credentials": "SELECT id, hashed_password FROM users WHERE email = %s",
}


class Driver(Protocol):
    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def now(self) -> Any: ...
    async def close(self) -> None: ...


class Sqlite:
    """One connection used on the event loop: each query is tens of microseconds of C."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
            self.conn.execute(f"PRAGMA {pragma}")
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(todos)")}
        self.sql = _dialect(columns, placeholder="?", ts="replace({}, ' ', 'T') || 'Z'")

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.conn.execute(sql, params).fetchone()
        return row

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def now(self) -> Any:  # as SQLAlchemy stores it: naive UTC with microseconds
        return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    async def close(self) -> None:
        self.conn.close()


class Postgres:
    """A few autocommit async connections, handed out through a queue."""

    def __init__(self, connections: list[psycopg.AsyncConnection[Any]], columns: set[str]) -> None:
        self.free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for connection in connections:
            self.free.put_nowait(connection)
        ts = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        self.sql = _dialect(columns, placeholder="%s", ts=ts)

    @classmethod
    async def connect(cls, conninfo: str, size: int) -> Postgres:
        connections = [await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(size)]
        cursor = await connections[0].execute("SELECT * FROM todos LIMIT 0")
        columns = {column.name for column in cursor.description or ()}
        return cls(connections, columns)

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        connection = await self.free.get()
        try:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchone()
        finally:
            self.free.put_nowait(connection)

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        connection = await self.free.get()
        try:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchall()
        finally:
            self.free.put_nowait(connection)

    def now(self) -> Any:
        return datetime.now(UTC)

    async def close(self) -> None:
        while not self.free.empty():
            await self.free.get_nowait().close()


def _dialect(columns: set[str], *, placeholder: str, ts: str) -> dict[str, str]:
    """The statements for one database; a `version` column (asgi_todo's ETag) is kept counting."""
    versioned = "version" in columns
    sql = {}
    for name, statement in _SQL.items():
        statement = statement.replace("{todo}", _TODO).replace("{user}", _USER)
        statement = statement.replace("{version}", ", version" if versioned else "")
        statement = statement.replace("{one}", ", 1" if versioned else "")
        statement = statement.replace("{bump}", ", version = version + 1" if versioned else "")
        while "{ts:" in statement:
            start = statement.index("{ts:")
            end = statement.index("}", start)
            statement = statement[:start] + ts.format(statement[start + 4 : end]) + statement[end + 1 :]
        sql[name] = statement.replace("%s", placeholder)
    return sql


# HS256 by hand: the same key and claims as asgi_todo's tokens.


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


_HEADER = _b64encode(b'{"alg":"HS256","typ":"JWT"}')


class Tokens:
    def __init__(self, key: str, ttl_seconds: int) -> None:
        self.key = key.encode()
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: int) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "iat": now, "exp": now + self.ttl_seconds}
        signing_input = _HEADER + b"." + _b64encode(json.dumps(claims, separators=(",", ":")).encode())
        return (signing_input + b"." + _b64encode(self._sign(signing_input))).decode()

    def user_id(self, token: bytes) -> int | None:
        """The `sub` of a token signed with our key and not expired; else None."""
        signing_input, _, signature = token.rpartition(b".")
        try:
            if not hmac.compare_digest(_b64decode(signature), self._sign(signing_input)):
                return None
            claims = json.loads(_b64decode(signing_input.partition(b".")[2]))
            subject = claims["sub"]
            if int(claims["exp"]) <= time.time() or not (isinstance(subject, str) and subject.isdecimal()):
                return None
            return int(subject)
        except (ValueError, KeyError, TypeError):
            return None

    def _sign(self, signing_input: bytes) -> bytes:
        return hmac.new(self.key, signing_input, hashlib.sha256).digest()


# The app


def _todo(row: Row) -> dict[str, Any]:
    return {"id": row[0], "text": row[1], "completed": bool(row[2]), "owner_id": row[3],
            "created_at": row[4], "updated_at": row[5]}  # fmt: skip


def _user(row: Row) -> dict[str, Any]:
    return {"id": row[0], "email": row[1], "fname": row[2], "lname": row[3], "is_superuser": bool(row[4]),
            "created_at": row[5], "updated_at": row[6]}  # fmt: skip


class Reply(Exception):
    """An answer other than the happy path's, raised from anywhere in a handler."""

    def __init__(self, status: int, body: Any, *headers: tuple[bytes, bytes]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


def _invalid(field: str, source: str = "query") -> Reply:
    return Reply(422, {"detail": [{"type": "value_error", "loc": [source, field], "msg": "Invalid value"}]})


_NOT_AUTHENTICATED = Reply(401, {"detail": "Not authenticated"}, _BEARER)
_INVALID = Reply(401, {"detail": "Invalid authentication credentials"}, _BEARER)
_NOT_FOUND = Reply(404, {"detail": "Not Found"})


class Ceiling:
    def __init__(self, *, database_url: str, secret_key: str, api_prefix: str, ttl_seconds: int, rounds: int) -> None:
        self.database_url = database_url
        self.tokens = Tokens(secret_key, ttl_seconds)
        self.prefix = api_prefix
        self.rounds = rounds
        self.db: Driver
        self.sql: dict[str, str] = {}
        self.dummy_hash = ""
        # One bcrypt at a time per core: more threads only share the cores and finish together.
        self.bcrypt = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="ceiling-bcrypt")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        headers: list[tuple[bytes, bytes]] = [_JSON]
        try:
            status, body = await self._route(scope, receive, headers)
        except Reply as reply:
            status, body = reply.status, reply.body
            headers.extend(reply.headers)
        content = json.dumps(body, separators=(",", ":")).encode()
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _route(self, scope: Scope, receive: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/health" and method == "GET":
            return await self._health()
        rest = path[len(self.prefix) :] if path.startswith(self.prefix) else ""
        if rest == "/todos/":
            if method == "GET":
                return await self._list(scope, headers)
            if method == "POST":
                return await self._create(scope, receive, headers)
        elif rest.startswith("/todos/") and rest[7:].isdecimal() and 0 < int(rest[7:]) <= INT_MAX:
            if method == "GET":
                return await self._get(scope, int(rest[7:]))
            if method == "PATCH":
                return await self._patch(scope, receive, int(rest[7:]))
        elif rest == "/auth/me" and method == "GET":
            row = await self.db.one(self.sql["me"], (self._caller(scope),))
            if row is None:
                raise _INVALID
            return 200, _user(row)
        elif rest == "/auth/token" and method == "POST":
            headers.append(_NO_STORE)
            return await self._token(receive)
        raise _NOT_FOUND

    async def _health(self) -> tuple[int, Any]:
        try:
            await self.db.one(self.sql["ping"])
        except (sqlite3.Error, psycopg.Error):
            return 503, {"name": NAME, "version": VERSION, "database": "unavailable"}
        return 200, {"name": NAME, "version": VERSION, "database": "ok"}

    def _caller(self, scope: Scope) -> int:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    break
                user_id = self.tokens.user_id(token.strip())
                if user_id is None:
                    raise _INVALID
                return user_id
        raise _NOT_AUTHENTICATED

    async def _list(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        offset = _int(query, "offset", 0, 0, INT_MAX)
        limit = _int(query, "limit", 10, 1, 100)
        caller = self._caller(scope)
        user = await self.db.one(self.sql["caller"], (caller,))
        if user is None:
            raise _INVALID
        if user[0]:
            rows = await self.db.all(self.sql["list_all"], (limit, offset))
        else:
            rows = await self.db.all(self.sql["list_own"], (caller, limit, offset))
        if query.get("count") == "true":  # the contract counts only when asked
            counted = self.db.one(self.sql["count_all"]) if user[0] else self.db.one(self.sql["count_own"], (caller,))
            total = await counted
            headers.append((b"x-total-count", str(total[0] if total else 0).encode()))
        return 200, [_todo(row) for row in rows]

    async def _get(self, scope: Scope, todo_id: int) -> tuple[int, Any]:
        caller = self._caller(scope)
        row = await self.db.one(self.sql["get"], (todo_id, caller, caller))
        if row is None:
            raise _NOT_FOUND
        return 200, {**_todo(row), "owner": _user(row[6:])}

    async def _create(self, scope: Scope, receive: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
        caller = self._caller(scope)
        body = await _json(receive)
        text, completed = _text(body, required=True), _completed(body)
        now = self.db.now()
        row = await self.db.one(self.sql["create"], (text, completed or False, now, now, caller))
        if row is None:
            raise _INVALID
        headers.append((b"location", f"{self.prefix}/todos/{row[0]}".encode()))
        return 201, _todo(row)

    async def _patch(self, scope: Scope, receive: Any, todo_id: int) -> tuple[int, Any]:
        caller = self._caller(scope)
        body = await _json(receive)
        text, completed = _text(body, required=False), _completed(body)
        row = await self.db.one(self.sql["patch"], (text, completed, self.db.now(), todo_id, caller))
        if row is None:
            raise _NOT_FOUND
        return 200, _todo(row)

    async def _token(self, receive: Any) -> tuple[int, Any]:
        form = dict(parse_qsl((await _body(receive)).decode("latin-1")))
        if form.get("grant_type", "password") not in ("", "password"):
            raise Reply(400, {"detail": "unsupported_grant_type"})
        username, password = form.get("username"), form.get("password")
        if username is None or password is None:
            raise _invalid("username" if username is None else "password", "body")
        row = await self.db.one(self.sql["credentials"], (username.lower(),))
        hashed = row[1] if row is not None else self.dummy_hash
        loop = asyncio.get_running_loop()
        matched = await loop.run_in_executor(self.bcrypt, verify_password, password, hashed)
        if row is None or not matched:
            raise Reply(401, {"detail": "Incorrect email or password"}, _BEARER)
        ttl = self.tokens.ttl_seconds
        return 200, {"access_token": self.tokens.issue(row[0]), "token_type": "bearer", "expires_in": ttl}

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.db.close()
                self.bcrypt.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        url = self.database_url
        if url.startswith("sqlite"):
            sqlite = Sqlite(url.split(":///", 1)[1].split("?", 1)[0])
            self.db, self.sql = sqlite, sqlite.sql
        else:
            postgres = await Postgres.connect(url.replace("+psycopg", "", 1), size=4)
            self.db, self.sql = postgres, postgres.sql
        self.dummy_hash = hash_password(os.urandom(12).hex(), rounds=self.rounds)


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _json(receive: Any) -> dict[str, Any]:
    try:
        body = json.loads(await _body(receive))
    except ValueError:
        raise _invalid("body", "body") from None
    if not isinstance(body, dict):
        raise _invalid("body", "body")
    return body


def _text(body: dict[str, Any], *, required: bool) -> str | None:
    text = body.get("text")
    if text is None and not required and "text" not in body:
        return None
    if not isinstance(text, str) or not 1 <= len(text) <= TEXT_MAX:
        raise _invalid("text", "body")
    return text


def _completed(body: dict[str, Any]) -> bool | None:
    if "completed" not in body:
        return None
    if not isinstance(body["completed"], bool):
        raise _invalid("completed", "body")
    completed: bool = body["completed"]
    return completed


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdecimal() or len(raw) > 10 or not low <= int(raw) <= high:
        raise _invalid(name)
    return int(raw)


def create_app() -> Ceiling:
    """From the environment, as asgi_todo reads it; SECRET_KEY is required here."""
    return Ceiling(
        database_url=os.environ.get("DATABASE_URL", "sqlite:///./asgi_todo.db"),
        secret_key=os.environ["SECRET_KEY"],
        api_prefix=os.environ.get("API_PREFIX", "/api"),
        ttl_seconds=int(os.environ.get("ACCESS_TOKEN_EXPIRE_MINUTES", "15")) * 60,
        rounds=int(os.environ.get("BCRYPT_ROUNDS", "12")),
    )
