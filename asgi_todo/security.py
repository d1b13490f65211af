"""Password hashing and JWT access tokens: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import bcrypt
import jwt

ALGORITHM = "HS256"
KEY_MIN_BYTES = 32
_BCRYPT_MAX_BYTES = 72
_SID_MAX = 64  # longer is no login id of ours


class InvalidToken(Exception):
    """The token is malformed, forged, expired or lacks a required claim."""


def new_secret_key() -> str:
    return secrets.token_urlsafe(48)


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What is stored of a refresh token: a leaked table row cannot be replayed."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str, *, rounds: int) -> str:
    """bcrypt; callers validate the 72-byte limit first (bcrypt 5 raises past it)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed: str) -> bool:
    """False for a wrong password, a password over bcrypt's limit, or a damaged hash.

    Whatever the outcome, one bcrypt computation is spent, so the time taken does not
    tell an attacker which case they hit.
    """
    secret = password.encode()
    fits = len(secret) <= _BCRYPT_MAX_BYTES
    try:
        matched = bcrypt.checkpw(secret if fits else secret[:_BCRYPT_MAX_BYTES], hashed.encode())
    except ValueError:
        return False
    return matched and fits


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: int
    issued_at: int
    expires_at: int
    version: int  # the user's token_version when issued; a password change bumps it
    login: str | None  # the login it belongs to (`sid`); a revoked login's tokens stop working


@dataclass(frozen=True, slots=True)
class TokenCodec:
    """Issues and checks HS256 access tokens; `sub`, `iat` and `exp` are required.

    `ver` carries the user's token version (0 when absent), `sid` the login (the refresh
    token family) the token belongs to.
    """

    key: str
    ttl_seconds: int

    def __post_init__(self) -> None:
        if len(self.key.encode()) < KEY_MIN_BYTES:
            raise ValueError(f"JWT keys must be at least {KEY_MIN_BYTES} bytes")

    def issue(self, user_id: int, *, version: int = 0, login: str | None = None, now: int | None = None) -> str:
        issued_at = int(time.time()) if now is None else now
        claims: dict[str, object] = {"sub": str(user_id), "iat": issued_at, "exp": issued_at + self.ttl_seconds}
        claims["ver"] = version
        if login is not None:
            claims["sid"] = login
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def decode(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub"]},
            )
            subject = payload["sub"]
            if not (isinstance(subject, str) and subject.isascii() and subject.isdecimal() and len(subject) <= 10):
                raise InvalidToken("sub is not a user id")
            version = payload.get("ver", 0)
            if not isinstance(version, int) or isinstance(version, bool):
                raise InvalidToken("ver is not an integer")
            login = payload.get("sid")
            if login is not None and not (isinstance(login, str) and login.isascii() and len(login) <= _SID_MAX):
                raise InvalidToken("sid is not a login id")
            return Claims(int(subject), int(payload["iat"]), int(payload["exp"]), version, login)
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise InvalidToken(str(exc)) from None
