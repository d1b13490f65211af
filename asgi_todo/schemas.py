"""pydantic models: what comes in, what goes out."""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from typing import Annotated, Any, Literal

import email_validator
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    EmailStr,
    Field,
    PlainValidator,
    Tag,
)
from pydantic.json_schema import SkipJsonSchema

from .limits import EMAIL_MAX, INT_MAX, NAME_MAX, PASSWORD_MAX, PASSWORD_MIN, PASSWORD_PATTERN, TEXT_MAX


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def canonical_email(value: str) -> str:
    """The form emails are stored and compared in: NFKC (fullwidth, ligatures, sub- and
    superscripts become plain letters) and case folding, so look-alikes are one account."""
    return unicodedata.normalize("NFKC", value).casefold()


def _canonical(value: Any) -> Any:
    return canonical_email(value) if isinstance(value, str) else value


Id = Annotated[int, Field(ge=1, le=INT_MAX)]


def _any_case(word: str) -> str:
    return "".join(f"[{char}{char.upper()}]" if char.isalpha() else re.escape(char) for char in word)


# email-validator refuses addresses at special-use domains (RFC 6761: .test, .local, ...),
# which JSON Schema's "email" format allows: the document says so with this pattern.
# Documentation only; email-validator does the checking.
_NOT_SPECIAL_USE = "^(?!.*[@.](?:{})$)".format("|".join(map(_any_case, email_validator.SPECIAL_USE_DOMAIN_NAMES)))

Email = Annotated[
    EmailStr,
    BeforeValidator(_canonical),  # before the address is checked: NFKC can make a "﹫" an "@"
    Field(
        max_length=EMAIL_MAX,
        description="Not at a special-use domain (" + ", ".join(email_validator.SPECIAL_USE_DOMAIN_NAMES) + ").",
        json_schema_extra={"pattern": _NOT_SPECIAL_USE},
    ),
]
Password = Annotated[
    str,
    Field(
        min_length=PASSWORD_MIN,
        max_length=PASSWORD_MAX,
        pattern=PASSWORD_PATTERN,
        description=f"{PASSWORD_MIN} to {PASSWORD_MAX} characters, no control characters.",
    ),
]
# PostgreSQL text cannot hold NUL characters: refuse them up front (a 422, not a 500).
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Field(max_length=NAME_MAX, pattern=NO_NUL)]
Text = Annotated[str, Field(min_length=1, max_length=TEXT_MAX, pattern=NO_NUL)]


class _In(BaseModel):
    """Request bodies: unknown fields are ignored, as FastAPI does."""

    model_config = ConfigDict(extra="ignore")


class _Out(BaseModel):
    """Responses: every field is sent, defaults too, so the document marks them all required."""

    model_config = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)


# Out


class Message(_Out):
    msg: str


class Health(_Out):
    name: str
    version: str
    database: str = Field(description='"ok", or "unavailable" with status 503')


class Liveness(_Out):
    status: Literal["alive"] = "alive"


class Readiness(_Out):
    status: Literal["ready", "not_ready"] = Field(description='"ready" with status 200, "not_ready" with 503')
    detail: str = Field(default="", description="empty when ready; the reason is in the service's log, not here")


class UserRead(_Out):
    id: int
    email: str
    fname: str
    lname: str
    is_superuser: bool
    created_at: datetime
    updated_at: datetime


class TodoRead(_Out):
    id: int
    text: str
    completed: bool
    owner_id: int
    created_at: datetime
    updated_at: datetime
    due_date: date | None


class UserReadNested(UserRead):
    todos: list[TodoRead]


class TodoReadNested(TodoRead):
    owner: UserRead


class Token(_Out):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(
        description="Single use: exchange it with grant_type=refresh_token for a new pair (RFC 6749 section 6)."
    )


class ErrorMessage(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    # Documentation only (errors.py writes the body): not required, and never null.
    ctx: dict[str, int | float | str] = Field(
        default_factory=dict, json_schema_extra=_drop_default, description="The rule's parameters, if it has any."
    )


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


# In


class UserCreate(_In):
    email: Email
    password: Password
    fname: Name = ""
    lname: Name = ""


DueDate = Annotated[date | None, Field(description="An ISO 8601 date (`2026-12-24`), or null for none.")]


class TodoCreate(_In):
    text: Text
    completed: bool = False
    due_date: DueDate = None


class TodoReplace(TodoCreate):
    # Optional; when sent it must equal the id in the path. Left out of the JSON Schema,
    # which cannot say "equal to the path's id": listed there as any integer, it would
    # invite requests that the API must refuse.
    id: SkipJsonSchema[Id | None] = None

    def changes(self) -> dict[str, Any]:
        """Text and completed; due_date only when sent, so a client that does not know it
        (the release before it) leaves it as it is."""
        return self.model_dump(include={"text", "completed"} | ({"due_date"} & self.model_fields_set))


class TodoPatch(_In):
    """Only the fields sent are changed; text and completed may not be null, a null
    due_date removes it."""

    text: Text = Field(default=None, json_schema_extra=_drop_default)  # type: ignore[assignment]
    completed: bool = Field(default=None, json_schema_extra=_drop_default)  # type: ignore[assignment]
    due_date: DueDate = Field(default=None, json_schema_extra=_drop_default)


class _Grant(_In):
    """RFC 6749's optional fields, accepted and ignored."""

    scope: str = Field(default="", max_length=1024, pattern=NO_NUL)
    client_id: str = Field(default="", max_length=256, pattern=NO_NUL)
    client_secret: str = Field(default="", max_length=256, pattern=NO_NUL)


class PasswordGrant(_Grant):
    """The OAuth2 password grant (RFC 6749 section 4.3)."""

    grant_type: Annotated[Literal["password"], BeforeValidator(lambda value: value or "password")] = Field(
        default="password", description="May be left out: the password grant is the default."
    )
    username: str = Field(max_length=EMAIL_MAX, pattern=NO_NUL, description="The account's email.")
    password: str = Field(max_length=4096)


class RefreshGrant(_Grant):
    """A refresh (RFC 6749 section 6): a new token pair for a refresh token."""

    grant_type: Literal["refresh_token"]
    refresh_token: str = Field(max_length=256, pattern=NO_NUL, description="Single use.")


class OtherGrant(_In):
    """Any other grant_type, which the token endpoint refuses with a 400 (RFC 6749 section 5.2)."""

    grant_type: str = Field(max_length=64, pattern=NO_NUL)


_GRANTS: dict[str, type[BaseModel]] = {"password": PasswordGrant, "refresh_token": RefreshGrant}


def _grant_type(form: Any) -> str:
    grant = form.get("grant_type") if isinstance(form, dict) else getattr(form, "grant_type", None)
    return grant or "password"


def _by_grant(form: Any) -> BaseModel:
    """The form as the model of its grant_type (any other: OtherGrant, for the 400). Validated
    here rather than as a tagged union, whose errors' `loc` would start with the tag."""
    return _GRANTS.get(_grant_type(form), OtherGrant).model_validate(form)


# The token form: one model per grant, chosen by grant_type, so the document says what each
# grant requires (oneOf); an unsupported grant_type is left out of it.
TokenForm = Annotated[
    PasswordGrant | RefreshGrant | OtherGrant,
    PlainValidator(
        _by_grant,
        json_schema_input_type=Annotated[
            Annotated[PasswordGrant, Tag("password")] | Annotated[RefreshGrant, Tag("refresh_token")],
            Discriminator(_grant_type),
        ],
    ),
]


class Logout(_In):
    refresh_token: str = Field(max_length=256, pattern=NO_NUL, description="A refresh token of the login to end.")


class UserUpdate(_In):
    """Only the fields sent change."""

    fname: Name = Field(default=None, json_schema_extra=_drop_default)  # type: ignore[assignment]
    lname: Name = Field(default=None, json_schema_extra=_drop_default)  # type: ignore[assignment]


class PasswordChange(_In):
    current_password: str = Field(max_length=4096)
    new_password: Password


# Query and path parameters


class Page(_In):
    """A page: after the last id of the page before (keyset: the cost of a page does not grow
    with how deep it is), or by offset (the original's clients). An offset counts from the
    cursor, so every combination the OpenAPI document allows is a valid request."""

    offset: int = Field(default=0, ge=0, le=INT_MAX)
    limit: int = Field(default=10, ge=1, le=100)
    after_id: Id | None = Field(
        default=None,
        description="Only rows with a greater id, the last of the page before (see `Link`); `offset` counts from it.",
    )
    count: bool = Field(default=False, description="Also count every row that matches, into `X-Total-Count`.")


class TodoFilter(Page):
    completed: bool | None = None
    user_id: Id | None = Field(default=None, description="Whose todos; someone else's needs a superuser.")


class ById(_In):
    id: Id
