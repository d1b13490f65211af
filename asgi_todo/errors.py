"""The exception tree, and the one place that turns an exception into a JSON response."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from starlette.exceptions import HTTPException
from starlette.responses import Response

logger = logging.getLogger("asgi_todo.errors")

_MSG_MAX = 200
_BEARER = {"WWW-Authenticate": "Bearer"}


# --8<-- [start:api-error]
class ApiError(Exception):
    """An error the client caused or may retry; its status and detail go out as JSON."""

    status: ClassVar[int] = 500
    default_detail: ClassVar[str] = "Internal Server Error"
    default_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, detail: Any = None, *, headers: Mapping[str, str] | None = None) -> None:
        self.detail = self.default_detail if detail is None else detail
        self.headers = {**self.default_headers, **(headers or {})}
        super().__init__(self.detail)


# --8<-- [end:api-error]


class BadRequest(ApiError):
    status = 400
    default_detail = "Bad Request"


class NotAuthenticated(ApiError):
    status = 401
    default_detail = "Not authenticated"
    default_headers = _BEARER


class InvalidCredentials(NotAuthenticated):
    default_detail = "Invalid authentication credentials"


class Forbidden(ApiError):
    status = 403
    default_detail = "Forbidden"


class InvalidGrant(BadRequest):
    """RFC 6749 section 5.2: a refresh token that is unknown, expired, used or revoked."""

    default_detail = "invalid_grant: the refresh token is invalid, expired or revoked"


# --8<-- [start:not-found]
class NotFound(ApiError):
    status = 404
    default_detail = "Not Found"


# --8<-- [end:not-found]


class Conflict(ApiError):
    status = 409
    default_detail = "Conflict"


class PreconditionFailed(ApiError):
    status = 412
    default_detail = "Precondition Failed: the todo has changed since the ETag you sent"


class PayloadTooLarge(ApiError):
    status = 413
    default_detail = "Request body too large"


class UnsupportedMediaType(ApiError):
    status = 415
    default_detail = "Unsupported Media Type: send application/json"


class ValidationFailed(ApiError):
    """A 422 whose detail is FastAPI's list of {type, loc, msg}."""

    status = 422

    @classmethod
    def from_pydantic(cls, errors: Iterable[Mapping[str, Any]], *, source: str) -> ValidationFailed:
        return cls([_issue(error, source) for error in errors])


class TooManyRequests(ApiError):
    status = 429
    default_detail = "Too many failed attempts; try again later"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(ApiError):
    status = 503
    default_detail = "Database unavailable"
    default_headers = {"Retry-After": "5"}


def _issue(error: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One pydantic error as FastAPI writes it, without the input (it may be a password)."""
    loc: list[str | int] = [source, *error.get("loc", ())]
    issue: dict[str, Any] = {"type": error["type"], "loc": loc, "msg": _short(str(error["msg"]))}
    ctx = error.get("ctx")
    if ctx:
        issue["ctx"] = {
            key: value if isinstance(value, int | float) else _short(str(value)) for key, value in ctx.items()
        }
    return issue


def _short(text: str) -> str:
    return text if len(text) <= _MSG_MAX else text[: _MSG_MAX - 3] + "..."


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status_code=status, headers=dict(headers or {}), media_type="application/json")


# --8<-- [start:error-response]
def error_response(exc: BaseException, *, request_id: str = "-") -> Response:
    """The JSON answer for any exception; unexpected ones are logged with the request id."""
    if isinstance(exc, ApiError):
        return json_response(exc.status, {"detail": exc.detail}, exc.headers)
    if isinstance(exc, HTTPException):
        return json_response(exc.status_code, {"detail": exc.detail}, exc.headers)
    logger.error("unhandled error in request %s", request_id, exc_info=exc)
    return json_response(500, {"detail": "Internal Server Error"})


# --8<-- [end:error-response]


def validation_issue(kind: str, loc: Sequence[str | int], msg: str) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": msg}
