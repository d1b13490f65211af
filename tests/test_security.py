"""Password hashing and tokens, as pure functions."""

from __future__ import annotations

import time
import warnings

import bcrypt
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from asgi_todo import security

from .helpers import SECRET_KEY

CODEC = security.TokenCodec(SECRET_KEY, 900)


def test_hash_and_verify() -> None:
    hashed = security.hash_password("correct horse", rounds=4)
    assert hashed.startswith("$bcrypt-sha256$v=2,t=2b,r=4$")
    assert security.verify_password("correct horse", hashed)
    assert not security.verify_password("wrong horse", hashed)
    assert not security.needs_rehash(hashed, rounds=4)
    assert security.needs_rehash(hashed, rounds=5)  # BCRYPT_ROUNDS changed since


def test_every_character_counts_past_72_bytes() -> None:
    password = "é" * 36  # 72 bytes
    hashed = security.hash_password(password, rounds=4)
    assert security.verify_password(password, hashed)
    assert not security.verify_password(password + "x", hashed)  # plain bcrypt would compare only 72 bytes
    long = security.hash_password("x" * 500, rounds=4)
    assert security.verify_password("x" * 500, long)
    assert not security.verify_password("x" * 499 + "y", long)


def test_a_hash_made_by_passlib_bcrypt_sha256_verifies() -> None:
    """The format and pre-hash are passlib's `bcrypt_sha256` version 2: its hashes verify here
    (this one is hashcat's example for mode 30601, the password "hashcat")."""
    hashed = "$bcrypt-sha256$v=2,t=2b,r=12$KSOjON/ciJR86a00N5q61.$AmWZucQuHk13FGkQWhgMeiFvBfm2GCy"
    assert security.verify_password("hashcat", hashed)
    assert not security.verify_password("hashcaT", hashed)


def test_plain_bcrypt_hashes_keep_verifying_and_ask_for_a_rehash() -> None:
    """The original's hashes (passlib's plain bcrypt, `$2b$`) and ours before pre-hashing."""
    hashed = bcrypt.hashpw(b"secret2", bcrypt.gensalt(4)).decode()
    assert security.verify_password("secret2", hashed)
    assert not security.verify_password("secret3", hashed)
    assert not security.verify_password("secret2\x00anything", hashed)  # bcrypt would stop at the NUL
    assert not security.verify_password("é" * 36 + "x", bcrypt.hashpw(("é" * 36).encode(), bcrypt.gensalt(4)).decode())
    assert security.needs_rehash(hashed, rounds=4)


@pytest.mark.parametrize(
    "hashed",
    [
        pytest.param("not-a-bcrypt-hash", id="garbage"),
        pytest.param("$bcrypt-sha256$v=2,t=2b,r=4$short$short", id="prehashed-shape-wrong"),
        pytest.param("$bcrypt-sha256$v=2,t=2b,r=99$" + "a" * 22 + "$" + "b" * 31, id="prehashed-rounds-wrong"),
        pytest.param("", id="empty"),
    ],
)
def test_a_damaged_hash_is_a_mismatch(hashed: str) -> None:
    assert not security.verify_password("anything", hashed)


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
