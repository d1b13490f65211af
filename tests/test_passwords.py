"""Passwords (docs: Security, "Passwords"): plain bcrypt hashes of the original keep logging in and are
replaced by pre-hashed ones on the next successful login; the document states the real rule,
so a password valid by the schema is never refused."""

from __future__ import annotations

import functools
import json
import re

import bcrypt
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from asgi_todo.openapi import document
from asgi_todo.schemas import UserCreate
from asgi_todo.settings import Settings

from .helpers import ALICE, TOKEN_URL, examples, make_settings


def stored_hash(settings: Settings, email: str) -> str:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            hashed: str = connection.execute(
                sa.text("SELECT hashed_password FROM users WHERE email = :email"), {"email": email}
            ).scalar_one()
            return hashed
    finally:
        engine.dispose()


def store_hash(settings: Settings, email: str, hashed: str) -> None:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE users SET hashed_password = :hashed WHERE email = :email"),
                {"hashed": hashed, "email": email},
            )
    finally:
        engine.dispose()


def attempt(client: TestClient, password: str) -> int:
    return client.post(TOKEN_URL, data={"username": ALICE[0], "password": password}).status_code


@pytest.mark.parametrize("prefix", [b"$2b$", b"$2a$", b"$2y$"])
def test_a_plain_bcrypt_hash_logs_in_and_is_upgraded(client: TestClient, settings: Settings, prefix: bytes) -> None:
    """As passlib's plain bcrypt stored them in the original (`$2b$`; other libraries wrote the
    older `$2a$`/`$2y$` idents of the same algorithm)."""
    plain = bcrypt.hashpw(ALICE[1].encode(), bcrypt.gensalt(4)).replace(b"$2b$", prefix, 1).decode()
    store_hash(settings, ALICE[0], plain)
    assert attempt(client, "wrong password") == 401
    assert stored_hash(settings, ALICE[0]) == plain  # a failed login changes nothing
    assert attempt(client, ALICE[1]) == 200
    upgraded = stored_hash(settings, ALICE[0])
    assert upgraded.startswith("$bcrypt-sha256$v=2,t=2b,r=4$"), upgraded
    assert attempt(client, ALICE[1]) == 200
    assert stored_hash(settings, ALICE[0]) == upgraded  # upgraded once
    assert attempt(client, "wrong password") == 401


@pytest.mark.parametrize("rounds", [5, 6])
def test_a_prehashed_hash_of_another_cost_is_rehashed_at_bcrypt_rounds(
    client: TestClient, settings: Settings, rounds: int
) -> None:
    """A hash made before BCRYPT_ROUNDS changed costs its old time at every check, which tells
    such accounts apart (docs: Security, Login timing): a successful login rehashes it at the configured
    cost; a failed one changes nothing."""
    from asgi_todo import security

    older = security.hash_password(ALICE[1], rounds=rounds)
    store_hash(settings, ALICE[0], older)
    assert attempt(client, "wrong password") == 401
    assert stored_hash(settings, ALICE[0]) == older
    assert attempt(client, ALICE[1]) == 200
    rehashed = stored_hash(settings, ALICE[0])
    assert rehashed.startswith(f"$bcrypt-sha256$v=2,t=2b,r={settings.bcrypt_rounds}$"), rehashed
    assert security.verify_password(ALICE[1], rehashed)
    assert attempt(client, ALICE[1]) == 200
    assert stored_hash(settings, ALICE[0]) == rehashed  # rehashed once


def test_a_plain_hash_of_another_cost_is_rehashed_at_bcrypt_rounds(client: TestClient, settings: Settings) -> None:
    """The original's `$2b$12$` hashes: pre-hashed at the configured cost on the next login."""
    plain = bcrypt.hashpw(ALICE[1].encode(), bcrypt.gensalt(5)).decode()
    store_hash(settings, ALICE[0], plain)
    assert attempt(client, ALICE[1]) == 200
    assert stored_hash(settings, ALICE[0]).startswith(f"$bcrypt-sha256$v=2,t=2b,r={settings.bcrypt_rounds}$")


def test_a_plain_hash_never_matches_a_password_it_would_cut(client: TestClient, settings: Settings) -> None:
    """bcrypt reads 72 bytes and stops at a NUL: through a plain hash, longer passwords and
    passwords with a NUL never log in (401, not 500), and the hash is not upgraded."""
    plain = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(4)).decode()
    store_hash(settings, ALICE[0], plain)
    assert attempt(client, "x" * 73) == 401
    assert attempt(client, "x" * 72 + "\x00") == 401
    assert stored_hash(settings, ALICE[0]) == plain


def test_login_applies_no_length_rule(client: TestClient) -> None:
    """The demo passwords are 6 and 7 characters; a login of any length gets an answer."""
    assert attempt(client, ALICE[1]) == 200
    for password in ("", "x", "x" * 4096, "\x00" * 10):
        assert attempt(client, password) == 401, password


@functools.cache  # the document is the same for every example
def _password_schema() -> dict[str, object]:
    schema: dict[str, object] = document(make_settings("sqlite:///unused.db"))["components"]["schemas"]["UserCreate"][
        "properties"
    ]["password"]
    return schema


def test_the_document_states_the_password_rule() -> None:
    schema = _password_schema()
    assert schema["minLength"] == 8
    assert schema["maxLength"] == 128
    assert isinstance(schema["pattern"], str)


@hypothesis_settings(max_examples=examples(200), deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_a_password_valid_by_the_document_is_accepted(data: st.DataObject) -> None:
    schema = _password_schema()
    pattern, minimum, maximum = schema["pattern"], schema["minLength"], schema["maxLength"]
    assert isinstance(pattern, str)
    assert isinstance(minimum, int)
    assert isinstance(maximum, int)
    valid = st.from_regex(pattern, fullmatch=True) | st.text(min_size=minimum, max_size=maximum)
    password = data.draw(
        valid.filter(lambda text: minimum <= len(text) <= maximum and re.fullmatch(pattern, text) is not None),
        label="password",
    )
    body = json.dumps({"email": "bob@example.com", "password": password})
    assert UserCreate.model_validate_json(body, strict=True).password == password


def test_an_unknown_email_costs_one_check_at_bcrypt_rounds(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An email that names no account is checked against a dummy hash made at the configured
    cost (here 5, not the default), once, like a wrong password (docs: Security, Login timing)."""
    from asgi_todo import security
    from asgi_todo.app import create_app

    checked: list[str] = []
    verify = security.verify_password

    def spying(password: str, hashed: str) -> bool:
        checked.append(hashed)
        return verify(password, hashed)

    monkeypatch.setattr(security, "verify_password", spying)
    with TestClient(create_app(make_settings(database_url, reset_db=False, bcrypt_rounds=5))) as client:
        form = {"username": "nobody@example.com", "password": "wrong password"}
        assert client.post(TOKEN_URL, data=form).status_code == 401
    assert len(checked) == 1
    assert checked[0].startswith("$bcrypt-sha256$v=2,t=2b,r=5$")
