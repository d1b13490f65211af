"""Sizes and rules that models, schemas, settings, security and lockout share: each named once here.

Imports nothing, so that every other module may import it.
"""

INT_MAX = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
TEXT_MAX = 1000  # a todo's text, in characters
NAME_MAX = 100  # a first or last name, in characters
EMAIL_MAX = 320  # an email address, in characters (RFC 3696's limit)
CLIENT_MAX = 64  # a client address as the lockout and the logins keep it
# A new password: counted in characters, as JSON Schema counts them; no control characters
# (C0, DEL, C1: a NUL once let the empty password log in). Pre-hashing lifts bcrypt's 72 bytes.
PASSWORD_MIN = 8
PASSWORD_MAX = 128
PASSWORD_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"  # noqa: S105 - a rule, not a password
BCRYPT_MAX_BYTES = 72  # bcrypt reads no more: hashes from before pre-hashing saw at most this
KEY_MIN_BYTES = 32  # a JWT signing key: PyJWT warns about shorter HS256 keys
IDEMPOTENCY_KEY_MAX = 255  # an Idempotency-Key's value, in characters (a UUID is 36)
