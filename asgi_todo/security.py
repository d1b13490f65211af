"""Password hashing and JWT access tokens: pure functions, no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import bcrypt
import jwt

from .limits import BCRYPT_MAX_BYTES, INT_MAX, KEY_MIN_BYTES

ALGORITHM = "HS256"
# A user id as `sub`: users.id is a 32-bit integer (limits.INT_MAX); a larger one would reach
# PostgreSQL as an out-of-range parameter (a 500), not as an unknown user (a 401).
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")
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


# Passwords are pre-hashed before bcrypt, as passlib's `bcrypt_sha256` (version 2) does, in
# its format: `$bcrypt-sha256$v=2,t=2b,r=<cost>$<salt>$<checksum>`. bcrypt itself reads at most
# 72 bytes and stops at a NUL; it gets the base64 of HMAC-SHA256(key=the salt, the password),
# 44 bytes without NUL, so every character of a password of any length counts.
_PREHASHED = "$bcrypt-sha256$"
_PREHASHED_FORMAT = re.compile(
    r"\$bcrypt-sha256\$v=2,t=(2[aby]),r=([0-9]{1,2})\$([./A-Za-z0-9]{22})\$([./A-Za-z0-9]{31})"
)


def _prehash(password: str, salt: bytes) -> bytes:
    return base64.b64encode(hmac.new(salt, password.encode(), hashlib.sha256).digest())


def hash_password(password: str, *, rounds: int) -> str:
    """bcrypt of the pre-hashed password (see _PREHASHED): no length limit, no truncation."""
    config = bcrypt.gensalt(rounds)  # b"$2b$12$" and 22 characters of salt
    salt = config[7:]
    checksum = bcrypt.hashpw(_prehash(password, salt), config)[29:]
    return f"{_PREHASHED}v=2,t=2b,r={rounds}${salt.decode()}${checksum.decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """False for a wrong password or a damaged hash. Hashes without the prefix are plain
    bcrypt (the original's, made by passlib, and ours before pre-hashing): there a password
    over bcrypt's 72 bytes, or with a NUL, never matches.

    Whatever the outcome, one bcrypt computation is spent, so the time taken does not
    tell an attacker which case they hit.
    """
    try:
        prehashed = _PREHASHED_FORMAT.fullmatch(hashed)
        if prehashed is not None:
            ident, rounds, salt, checksum = prehashed.groups()
            plain = f"${ident}${int(rounds):02d}${salt}{checksum}".encode()
            return bcrypt.checkpw(_prehash(password, salt.encode()), plain)
        secret = password.encode()
        fits = len(secret) <= BCRYPT_MAX_BYTES and b"\0" not in secret
        matched = bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], hashed.encode())
    except ValueError:
        return False
    return matched and fits


def needs_rehash(hashed: str, *, rounds: int) -> bool:
    """A plain bcrypt hash, or one of another cost than `rounds`: replace it, after a
    successful login, with a pre-hashed one at `rounds`. Until then every check of it costs
    its own rounds, so its time tells it apart from the other accounts (and the dummy)."""
    prehashed = _PREHASHED_FORMAT.fullmatch(hashed)
    return prehashed is None or int(prehashed.group(2)) != rounds


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
            if not (isinstance(subject, str) and _USER_ID.fullmatch(subject) and int(subject) <= INT_MAX):
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
