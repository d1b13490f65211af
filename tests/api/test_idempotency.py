"""Idempotency-Key on POST /api/todos/ and POST /api/users/signup (docs: Retries), through
the TestClient on both databases. The races through real servers:
tests/test_idempotency_races.py."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.responses import Response
from starlette.testclient import TestClient

from asgi_todo import idempotency
from asgi_todo.errors import BadRequest
from asgi_todo.models import IdempotencyKey, utcnow
from asgi_todo.settings import Settings
from asgi_todo.startup import prepare

from ..helpers import SECRET_KEY, analyze, assert_422, scalar

TODOS = "/api/todos/"
SIGNUP = "/api/users/signup"
PASSWORD = "a long enough password"


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f'"{uuid.uuid4()}"'}


def _count(settings: Settings, table: str) -> int:
    return int(scalar(settings.database_url, f"SELECT count(*) FROM {table}"))  # noqa: S608 - a constant


def _when(settings: Settings, moment: datetime) -> datetime:
    """A time as a bound parameter of raw SQL: SQLite's columns hold naive UTC (UTCDateTime)."""
    return moment.replace(tzinfo=None) if settings.is_sqlite else moment


def _execute(settings: Settings, statement: str, **values: object) -> None:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement), values)
    finally:
        engine.dispose()


def test_a_retried_create_gets_the_first_response_and_creates_nothing(
    client: TestClient, alice: dict[str, str], settings: Settings
) -> None:
    headers = {**alice, **_key()}
    first = client.post(TODOS, json={"text": "once"}, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    todos = _count(settings, "todos")

    client.patch(first.headers["location"], json={"text": "changed since"}, headers=alice)
    again = client.post(TODOS, json={"text": "once"}, headers=headers)

    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()  # the stored response, not the todo as it is now
    assert again.headers["location"] == first.headers["location"] == f"/api/todos/{first.json()['id']}"
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["content-type"] == "application/json"
    assert _count(settings, "todos") == todos


def test_a_retried_sign_up_gets_the_first_response_and_counts_once(client: TestClient, settings: Settings) -> None:
    """Replays do not reach the handler: more of them than SIGNUP_MAX_PER_CLIENT are all 201s."""
    headers = _key()
    body = {"email": "retried@example.com", "password": PASSWORD}
    first = client.post(SIGNUP, json=body, headers=headers)
    assert first.status_code == 201, first.text
    replays = [client.post(SIGNUP, json=body, headers=headers) for _ in range(settings.signup_max_per_client + 2)]
    assert {(replay.status_code, replay.headers["idempotent-replayed"]) for replay in replays} == {(201, "true")}
    assert {replay.headers["location"] for replay in replays} == {first.headers["location"]}
    assert all(replay.json() == first.json() for replay in replays)
    assert scalar(settings.database_url, "SELECT count(*) FROM users WHERE email = 'retried@example.com'") == 1


def test_without_a_key_each_post_is_a_new_todo(client: TestClient, alice: dict[str, str], settings: Settings) -> None:
    todos = _count(settings, "todos")
    for _ in range(2):
        response = client.post(TODOS, json={"text": "twice"}, headers=alice)
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers
    assert _count(settings, "todos") == todos + 2


@pytest.mark.parametrize(
    "second",
    [
        pytest.param({"text": "another text"}, id="other-body"),
        pytest.param({"text": "once", "completed": True}, id="other-field"),
    ],
)
def test_the_same_key_for_a_different_request_is_a_422(
    client: TestClient, alice: dict[str, str], settings: Settings, second: dict[str, object]
) -> None:
    headers = {**alice, **_key()}
    assert client.post(TODOS, json={"text": "once"}, headers=headers).status_code == 201
    todos = _count(settings, "todos")
    response = client.post(TODOS, json=second, headers=headers)
    assert_422(response, ["header", "Idempotency-Key"])
    assert response.json()["detail"][0]["type"] == "idempotency_key_reused"
    assert _count(settings, "todos") == todos


def test_the_path_without_its_slash_is_the_same_operation(client: TestClient, alice: dict[str, str]) -> None:
    headers = {**alice, **_key()}
    first = client.post(TODOS, json={"text": "once"}, headers=headers)
    again = client.post(TODOS.rstrip("/"), json={"text": "once"}, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


def test_keys_are_each_users_own(
    client: TestClient, alice: dict[str, str], john: dict[str, str], settings: Settings
) -> None:
    """One user's key never replays to another, even for the same body."""
    key = _key()
    mine = client.post(TODOS, json={"text": "same"}, headers={**alice, **key})
    theirs = client.post(TODOS, json={"text": "same"}, headers={**john, **key})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs.json()["owner_id"] == 1
    assert client.post(TODOS, json={"text": "other"}, headers={**john, **key}).status_code == 422


def test_sign_up_keys_are_each_client_addresses_own(settings: Settings) -> None:
    from asgi_todo.app import create_app

    key = _key()
    body = {"email": "by-address@example.com", "password": PASSWORD}
    app = create_app(settings)
    with TestClient(app, client=("192.0.2.1", 1000)) as first, TestClient(app, client=("192.0.2.2", 1000)) as other:
        assert first.post(SIGNUP, json=body, headers=key).status_code == 201
        replay = first.post(SIGNUP, json=body, headers=key)
        assert replay.headers["idempotent-replayed"] == "true"
        elsewhere = other.post(SIGNUP, json=body, headers=key)
    assert elsewhere.status_code == 409  # run, not replayed: the email is taken
    assert elsewhere.json() == {"detail": "Email already registered."}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('""', id="empty"),
        pytest.param('"unterminated', id="unterminated"),
        pytest.param('"a"b"', id="inner-quote"),
        pytest.param('"tab\tinside"', id="control-character"),
        pytest.param("two words", id="bare-with-space"),
        pytest.param('"' + "k" * 256 + '"', id="over-long"),
        pytest.param("k" * 256, id="over-long-bare"),
        pytest.param('"k";param=1', id="parameters"),
    ],
)
def test_a_malformed_or_over_long_key_is_a_400(
    client: TestClient, alice: dict[str, str], settings: Settings, value: str
) -> None:
    todos = _count(settings, "todos")
    response = client.post(TODOS, json={"text": "never"}, headers={**alice, "Idempotency-Key": value})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"detail"}
    assert "Idempotency-Key" in response.json()["detail"]
    assert _count(settings, "todos") == todos


def test_a_key_sent_twice_is_a_400(client: TestClient, alice: dict[str, str]) -> None:
    headers = [*alice.items(), ("Idempotency-Key", '"a"'), ("Idempotency-Key", '"b"')]
    response = client.post(TODOS, json={"text": "never"}, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"detail": "Idempotency-Key must be sent once"}


def test_the_longest_key_and_a_bare_key_are_accepted(client: TestClient, alice: dict[str, str]) -> None:
    longest = '"' + "k" * 255 + '"'
    assert client.post(TODOS, json={"text": "a"}, headers={**alice, "Idempotency-Key": longest}).status_code == 201
    bare = str(uuid.uuid4())
    first = client.post(TODOS, json={"text": "b"}, headers={**alice, "Idempotency-Key": bare})
    quoted = client.post(TODOS, json={"text": "b"}, headers={**alice, "Idempotency-Key": f'"{bare}"'})
    assert quoted.headers["idempotent-replayed"] == "true"  # the same key, quoted or not
    assert quoted.json()["id"] == first.json()["id"]


def test_a_retry_while_the_first_is_in_flight_is_a_409_then_a_replay(
    client: TestClient, alice: dict[str, str], settings: Settings
) -> None:
    """The first request's write, held open on another connection after storing its answer:
    on PostgreSQL a retry is a 409 at once (the advisory lock is taken), on SQLite it waits
    for the write lock; once the first commits, the retry is its replay."""
    key, body = str(uuid.uuid4()), b'{"text":"in flight"}'
    headers = {**alice, "Idempotency-Key": f'"{key}"', "Content-Type": "application/json"}
    todos = _count(settings, "todos")
    first = idempotency.Keyed(
        caller="user:2",
        key=key,
        fingerprint=idempotency.fingerprint(SECRET_KEY, method="POST", path=TODOS, body=body),
        ttl=timedelta(days=1),
        render=lambda _: Response('{"id": 999}', 201, {"Location": "/api/todos/999"}),
    )
    engine = sa.create_engine(settings.database_url)
    try:
        with Session(engine) as session:
            first.claim(session)
            first.store(session, None)  # SQLite: this INSERT takes the write lock
            with ThreadPoolExecutor(1) as pool:
                retry = pool.submit(client.post, TODOS, content=body, headers=headers)
                if settings.is_sqlite:
                    time.sleep(0.3)
                    assert not retry.done()  # waiting for the write lock
                else:
                    busy = retry.result(timeout=10)
                    assert busy.status_code == 409
                    assert busy.json()["detail"].startswith("A request with this Idempotency-Key is still being")
                    assert busy.headers["retry-after"] == "1"
                session.commit()
                replayed = (
                    retry.result(timeout=10)
                    if settings.is_sqlite
                    else client.post(TODOS, content=body, headers=headers)
                )
    finally:
        engine.dispose()
    assert replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == {"id": 999}
    assert _count(settings, "todos") == todos


def _in_flight(settings: Settings, *, key: str, body: bytes, caller: str, locked_for: float) -> None:
    """A key held as a sign-up holds it between its count and its answer (or as one killed
    in between leaves it)."""
    now = utcnow()
    values = {
        "caller": caller,
        "key": key,
        "fingerprint": idempotency.fingerprint(SECRET_KEY, method="POST", path=TODOS, body=body),
        "token": uuid.uuid4().hex,
        "locked_until": _when(settings, now + timedelta(seconds=locked_for)),
        "expires_at": _when(settings, now + timedelta(days=1)),
    }
    _execute(
        settings,
        "INSERT INTO idempotency_keys (caller, key, fingerprint, token, locked_until, expires_at)"
        " VALUES (:caller, :key, :fingerprint, :token, :locked_until, :expires_at)",
        **values,
    )


def test_a_held_key_is_a_409_until_its_lease_runs_out(
    client: TestClient, alice: dict[str, str], settings: Settings
) -> None:
    key, body = str(uuid.uuid4()), b'{"text":"in flight"}'
    _in_flight(settings, key=key, body=body, caller="user:2", locked_for=idempotency.LEASE_SECONDS)
    headers = {**alice, "Idempotency-Key": f'"{key}"', "Content-Type": "application/json"}
    todos = _count(settings, "todos")

    busy = client.post(TODOS, content=body, headers=headers)
    assert busy.status_code == 409
    assert busy.json()["detail"].startswith("A request with this Idempotency-Key is still being processed")
    assert busy.headers["retry-after"] == "1"
    assert _count(settings, "todos") == todos

    past = utcnow() - timedelta(seconds=1)
    _execute(
        settings,
        "UPDATE idempotency_keys SET locked_until = :past WHERE key = :key",
        past=_when(settings, past),
        key=key,
    )
    taken_over = client.post(TODOS, content=body, headers=headers)  # its holder died before its commit
    assert taken_over.status_code == 201
    assert "idempotent-replayed" not in taken_over.headers
    assert client.post(TODOS, content=body, headers=headers).headers["idempotent-replayed"] == "true"
    assert _count(settings, "todos") == todos + 1


def test_a_failed_request_gives_its_key_back(client: TestClient, settings: Settings) -> None:
    """A sign-up refused (email taken) leaves no key: the retry runs again, it is not a 409."""
    headers = _key()
    body = {"email": "johndoe@example.com", "password": PASSWORD}
    for _ in range(2):
        response = client.post(SIGNUP, json=body, headers=headers)
        assert response.status_code == 409
        assert response.json() == {"detail": "Email already registered."}
    assert _count(settings, "idempotency_keys") == 0


def test_an_expired_key_is_forgotten_and_purged(client: TestClient, alice: dict[str, str], settings: Settings) -> None:
    headers = {**alice, **_key()}
    first = client.post(TODOS, json={"text": "long ago"}, headers=headers)
    other = client.post(TODOS, json={"text": "also long ago"}, headers={**alice, **_key()})
    assert (first.status_code, other.status_code) == (201, 201)
    past = utcnow() - timedelta(seconds=1)
    _execute(
        settings,
        "UPDATE idempotency_keys SET expires_at = :past",
        past=_when(settings, past),
    )

    again = client.post(TODOS, json={"text": "long ago"}, headers=headers)

    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert _count(settings, "idempotency_keys") == 1  # the other expired key was purged on the way
    assert client.post(TODOS, json={"text": "long ago"}, headers=headers).headers["idempotent-replayed"] == "true"


def test_keys_expire_after_idempotency_ttl(settings: Settings) -> None:
    from asgi_todo.app import create_app

    short = settings.model_copy(update={"idempotency_ttl": 60})
    with TestClient(create_app(short)) as client:
        before = utcnow()
        body = {"email": "ttl@example.com", "password": PASSWORD}
        assert client.post(SIGNUP, json=body, headers=_key()).status_code == 201
        engine = sa.create_engine(settings.database_url)
        try:
            with Session(engine) as session:
                expires = session.scalars(sa.select(IdempotencyKey.expires_at)).one()
        finally:
            engine.dispose()
    assert timedelta(seconds=59) <= expires - before <= timedelta(seconds=70)


def test_the_purge_and_the_lookup_read_through_indexes(settings: Settings) -> None:
    """Purging expired keys must not read the table whole, however many keys it holds:
    EXPLAIN of the statements a keyed write's claim and purge send, on a table of 20,000 keys (ANALYZE'd)."""
    prepare(settings, start=f"plans-{uuid.uuid4().hex}", force=True)
    engine = sa.create_engine(settings.database_url)
    now = utcnow()
    rows = [
        {
            "caller": f"user:{n % 500}",
            "key": str(n),
            "fingerprint": "0" * 64,
            "token": "t",
            "expires_at": now + timedelta(seconds=n - 100),  # the first hundred expired
            "status": 201,
        }
        for n in range(20_000)
    ]
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(IdempotencyKey), rows)
        analyze(engine)
        seen: list[tuple[str, Any]] = []

        def record(*args: object) -> None:
            seen.append((str(args[2]), args[3]))

        sa.event.listen(engine, "before_cursor_execute", record)
        keyed = idempotency.Keyed(
            caller="user:499", key="19999", fingerprint="0" * 64, ttl=timedelta(days=1), render=Response
        )
        with Session(engine) as session:
            with pytest.raises(idempotency.Replayed):
                keyed.claim(session)
            idempotency.purge(session, now=now)
            session.rollback()
        sa.event.remove(engine, "before_cursor_execute", record)
        # PostgreSQL's advisory lock, the key's row, the purge
        assert len(seen) == (2 if settings.is_sqlite else 3), seen
        with engine.connect() as connection:
            for sql, parameters in seen:
                steps: list[str] = []
                if connection.dialect.name == "sqlite":
                    steps += [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters)]
                    assert not [step for step in steps if step.startswith("SCAN idempotency_keys")], (sql, steps)
                else:
                    steps += connection.exec_driver_sql(f"EXPLAIN {sql}", parameters).scalars()
                    assert not [step for step in steps if "Seq Scan on idempotency_keys" in step], (sql, steps)
            assert any("ix_idempotency_keys_expires_at" in step for step in steps), steps  # the purge's
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "value",
    ['"a"', "a", '"a\\"b"', '"' + "k" * 255 + '"', "k" * 255, '""', '"' + "k" * 256 + '"', "k" * 256, "a b", '"a"b"'],
)
def test_the_documents_pattern_is_what_the_server_accepts(value: str) -> None:
    try:
        idempotency.request_key({"headers": [(b"idempotency-key", value.encode())]})
        accepted = True
    except BadRequest:
        accepted = False
    assert bool(re.fullmatch(idempotency.PATTERN, value)) == accepted
