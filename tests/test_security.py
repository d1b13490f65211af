"""Password hashing and tokens, as pure functions."""

from __future__ import annotations

import time
import warnings

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from asgi_todo import security

from .conftest import SECRET_KEY

CODEC = security.TokenCodec(SECRET_KEY, 900)


def test_hash_and_verify() -> None:
    hashed = security.hash_password("correct horse", rounds=4)
    assert hashed.startswith("$2b$04$")
    assert security.verify_password("correct horse", hashed)
    assert not security.verify_password("wrong horse", hashed)


def test_password_over_72_bytes_never_matches_and_never_raises() -> None:
    password = "é" * 36  # 72 bytes
    hashed = security.hash_password(password, rounds=4)
    assert security.verify_password(password, hashed)
    assert not security.verify_password(password + "x", hashed)  # bcrypt would compare only 72 bytes


def test_damaged_hash_is_a_mismatch() -> None:
    assert not security.verify_password("anything", "not-a-bcrypt-hash")


def test_token_round_trip() -> None:
    claims = CODEC.decode(CODEC.issue(42))
    assert claims.user_id == 42
    assert claims.expires_at - claims.issued_at == 900


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        security.TokenCodec("short", 900)


def _forge(claims: dict[str, object], key: str | None = SECRET_KEY, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():  # HS512 would like a longer key; it is refused anyway
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=algorithm)


NOW = int(time.time())


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(_forge({"sub": "1", "iat": NOW, "exp": NOW - 10}), id="expired"),
        pytest.param(_forge({"sub": "1", "iat": NOW}), id="no-exp"),
        pytest.param(_forge({"sub": "1", "exp": NOW + 60}), id="no-iat"),
        pytest.param(_forge({"iat": NOW, "exp": NOW + 60}), id="no-sub"),
        pytest.param(_forge({"sub": 1, "iat": NOW, "exp": NOW + 60}), id="integer-sub"),
        pytest.param(_forge({"sub": "\u0661", "iat": NOW, "exp": NOW + 60}), id="non-ascii-digit-sub"),
        pytest.param(_forge({"sub": "99999999999", "iat": NOW, "exp": NOW + 60}), id="huge-sub"),
        pytest.param(_forge({"sub": "1", "iat": NOW, "exp": NOW + 60}, key="x" * 40), id="other-key"),
        pytest.param(_forge({"sub": "1", "iat": NOW, "exp": NOW + 60}, algorithm="HS512"), id="other-algorithm"),
        pytest.param(_forge({"sub": "1", "iat": NOW, "exp": NOW + 60}, key=None, algorithm="none"), id="alg-none"),
        pytest.param(_forge({"sub": "1", "iat": NOW, "exp": NOW + 60, "sid": 5}), id="integer-sid"),
        pytest.param(_forge({"sub": "1", "iat": NOW, "exp": NOW + 60, "sid": "x" * 65}), id="huge-sid"),
        pytest.param("not.a.token", id="garbage"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(security.InvalidToken):
        CODEC.decode(token)


def test_a_token_carries_its_login() -> None:
    claims = CODEC.decode(CODEC.issue(7, version=3, login="0123456789abcdef0123456789abcdef"))
    assert (claims.user_id, claims.version, claims.login) == (7, 3, "0123456789abcdef0123456789abcdef")
    assert CODEC.decode(CODEC.issue(7)).login is None
