"""schemathesis hooks (openapi/schemathesis.toml loads this file).

A password is 8 to 72 bytes of UTF-8, bcrypt's limit. JSON Schema can only count
characters, so the document states the byte rule in words and the widest character
bounds; a "valid" case with a password outside the byte range would be reported as a
valid request the API refused. Such cases are dropped, for valid (positive) bodies only.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

PASSWORD_FIELDS = ("password", "new_password")
PASSWORD_BYTES = range(8, 73)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    body = case.body
    if case.meta is None or case.meta.is_negative_at(ParameterLocation.BODY) or not isinstance(body, dict):
        return True
    if case.media_type != "application/json":
        return True  # the token form's password has no length rule
    return all(
        len(body[name].encode("utf-8", "surrogatepass")) in PASSWORD_BYTES
        for name in PASSWORD_FIELDS
        if isinstance(body.get(name), str)
    )
