"""The OpenAPI 3.1 document, written by apispec from the `Operation` declarations.

Nothing here describes an operation a second time: paths, parameters, bodies, responses
and security all come from the same objects that `operations.Endpoint` validates with,
and the pydantic models become the document's components.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from apispec import APISpec
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__, idempotency
from .api import OPERATIONS
from .limits import IDEMPOTENCY_KEY_MAX
from .operations import Auth, Operation
from .schemas import ErrorMessage, ValidationErrorBody
from .settings import Settings

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "OAuth2PasswordBearer"
_REF = "#/components/schemas/{model}"

_DESCRIPTION = """\
The todo API of the FastAPI example app ("Example Todo App with FastAPI and SQLAlchemy"),
hand-written on Starlette: users, the OAuth2 password flow with JWT bearer tokens, and todos.

Every error is JSON, `{"detail": "..."}`; a validation error (422) lists its problems as
FastAPI does. Every response carries an `X-Request-ID` header.

In Swagger UI, **Authorize** with an account's email as the username. A database reset
(`RESET_DB=1`) loads the demo accounts `johndoe@example.com` / `secret` (a superuser) and
`alice@example.com` / `secret2`.
"""

_TAGS = {
    "service": "The greeting and the health check.",
    "auth": "Access tokens (OAuth2 password grant) and the current user.",
    "users": "Sign-up and user accounts.",
    "todos": "The caller's todos (a superuser's: everyone's).",
}

# The error statuses an operation may declare: component name and description. Each
# is answered with ErrorMessage, except 422 (ValidationErrorBody).
_ERRORS = {
    400: ("BadRequest", "The request is not one this operation supports."),
    401: ("NotAuthenticated", "No bearer token, or one that is invalid or expired; at login, wrong credentials."),
    403: ("Forbidden", "Authenticated, but not allowed to do this."),
    404: ("NotFound", "No such resource, or not yours."),
    409: (
        "Conflict",
        "The resource already exists; or a request with the same Idempotency-Key is still in flight"
        " (retry after Retry-After).",
    ),
    412: ("PreconditionFailed", "The resource changed since the version the request names."),
    413: ("PayloadTooLarge", "The request body is larger than MAX_BODY_BYTES."),
    415: ("UnsupportedMediaType", "The body's Content-Type is not one this operation reads."),
    422: (
        "ValidationError",
        "The path, query or body failed validation; or the Idempotency-Key was used for a different request.",
    ),
    429: ("TooManyRequests", "Too many failed attempts: wait for the seconds in Retry-After."),
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Always `Bearer`.", "schema": {"type": "string", "const": "Bearer"}}},
    409: {
        "Retry-After": {
            "description": "Idempotency-Key in flight: seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    429: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 0}}},
}
_BODYLESS = (204, 304)  # as operations.Endpoint renders them

# Response headers are strings on the wire; these say what the string holds.
_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Location": {"type": "string", "format": "uri-reference"},
    "X-Total-Count": {"type": "integer", "minimum": 0},
    idempotency.REPLAYED: {"type": "string", "const": "true"},
}
# Request headers, likewise; the others are plain strings.
_REQUEST_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    # An sf-string: the key in double quotes (a bare key is accepted too).
    idempotency.HEADER: {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX + 2},
}


def document(settings: Settings, operations: Sequence[Operation] = OPERATIONS) -> dict[str, Any]:
    """The document for this API prefix, as a dict ready for JSON."""
    spec = APISpec(
        title="asgi_todo",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
    )
    for name, description in _TAGS.items():
        spec.tag({"name": name, "description": description})
    schemas = _Schemas(operations)
    for name, schema in schemas.components.items():
        spec.components.schema(name, schema)
    _add_error_responses(spec, schemas)
    spec.components.security_scheme(
        SECURITY_SCHEME,
        {
            "type": "oauth2",
            "description": "A bearer token from the token endpoint; the username is the account's email.",
            "flows": {"password": {"tokenUrl": f"{settings.api_prefix}/auth/token", "scopes": {}}},
        },
    )
    for operation in operations:
        spec.path(
            path=operation.full_path(settings.api_prefix),
            operations={operation.method.lower(): _operation(operation, operations, schemas)},
        )
    built = spec.to_dict()
    built["info"].update(description=_DESCRIPTION, license={"name": "MIT", "identifier": "MIT"})
    built["servers"] = [{"url": "/", "description": "The server that serves this document."}]
    # apispec writes "paths" first; put the document in the order people read it.
    order = ("openapi", "info", "servers", "tags", "paths", "components")
    return {key: built[key] for key in order if key in built}


def document_json(settings: Settings, operations: Sequence[Operation] = OPERATIONS) -> str:
    """The document as the text that /openapi.json serves and openapi/openapi.json holds."""
    return json.dumps(document(settings, operations), indent=2, ensure_ascii=False) + "\n"


def routes(settings: Settings, operations: Sequence[Operation] = OPERATIONS) -> list[Route]:
    return [Route("/openapi.json", _Served(settings, operations).endpoint, methods=["GET"], name="openapi")]


class _Served:
    """Builds the document on the first request, not in create_app: most apps never serve it."""

    def __init__(self, settings: Settings, operations: Sequence[Operation]) -> None:
        self._settings = settings
        self._operations = operations
        self._body: bytes | None = None

    async def endpoint(self, request: Request) -> Response:
        if self._body is None:
            self._body = document_json(self._settings, self._operations).encode()
        return Response(self._body, media_type="application/json")


class _RequestSchema(GenerateJsonSchema):
    """JSON Schema without `default` in request bodies and forms.

    Generators read a default as "always present" (openapi-typescript makes such a field
    required), which is true of a response and false of a request, where a field with a
    default may be left out. Query parameters keep theirs (generators read those right).
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        found = super().default_schema(schema)
        if self.mode == "validation":
            found.pop("default", None)
        return found


class _Schemas:
    """Every model the operations name, as JSON Schema: one pydantic call for all of them,
    so shared models become one component and refs point at components."""

    def __init__(self, operations: Sequence[Operation]) -> None:
        inputs: list[tuple[Any, Any, TypeAdapter[Any]]] = []
        for operation in operations:
            request = operation.body if operation.body is not None else operation.form
            if request is not None:
                inputs.append(((operation.name, "body"), "validation", TypeAdapter(request)))
            if operation.response is not None:
                inputs.append(((operation.name, "response"), "serialization", TypeAdapter(operation.response)))
        for model in (ErrorMessage, ValidationErrorBody):
            inputs.append(((model.__name__, "error"), "serialization", TypeAdapter(model)))
        self._refs, defs = TypeAdapter.json_schemas(inputs, ref_template=_REF, schema_generator=_RequestSchema)
        self.components = _reachable(self._refs.values(), defs.get("$defs", {}))

    def body(self, operation: Operation) -> dict[str, Any]:
        return self._refs[((operation.name, "body"), "validation")]

    def response(self, operation: Operation) -> dict[str, Any]:
        return self._refs[((operation.name, "response"), "serialization")]

    def error(self, model: type[BaseModel]) -> dict[str, Any]:
        return self._refs[((model.__name__, "error"), "serialization")]


def _reachable(roots: Iterable[Any], defs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The definitions that the roots refer to, directly or not. pydantic also defines models
    that no schema refers to (the token form's OtherGrant, validated but not documented)."""
    names: set[str] = set()
    pending = list(roots)
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and (name := ref.rsplit("/", 1)[1]) not in names:
                names.add(name)
                pending.append(defs[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return {name: schema for name, schema in defs.items() if name in names}


def _add_error_responses(spec: APISpec, schemas: _Schemas) -> None:
    for status, (name, description) in _ERRORS.items():
        model = ValidationErrorBody if status == 422 else ErrorMessage
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": schemas.error(model)}},
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        spec.components.response(name, response)


def _operation(operation: Operation, operations: Sequence[Operation], schemas: _Schemas) -> dict[str, Any]:
    spec: dict[str, Any] = {"operationId": operation.name, "tags": [operation.tag], "summary": operation.summary}
    if operation.description:
        spec["description"] = operation.description
    parameters = [
        *_parameters(operation.params, "path"),
        *_parameters(operation.query, "query"),
        *_header_parameters(operation),
    ]
    if parameters:
        spec["parameters"] = parameters
    if operation.body is not None:
        content = {"application/json": {"schema": schemas.body(operation)}}
        spec["requestBody"] = {"required": operation.body_required, "content": content}
    elif operation.form is not None:
        content = {"application/x-www-form-urlencoded": {"schema": schemas.body(operation)}}
        spec["requestBody"] = {"required": True, "content": content}
    spec["responses"] = _responses(operation, operations, schemas)
    # A public operation says so (an empty list), rather than leaving readers to guess.
    spec["security"] = [] if operation.auth is Auth.NONE else [{SECURITY_SCHEME: []}]
    return spec


def _responses(operation: Operation, operations: Sequence[Operation], schemas: _Schemas) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted({operation.status, *operation.replies}):
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if operation.response is not None and status not in _BODYLESS:
            response["content"] = {"application/json": {"schema": schemas.response(operation)}}
        if status < 400 and operation.headers:  # a 304 carries the ETag too; health's 503 has none
            response["headers"] = {
                name: {"description": description, "schema": _HEADER_SCHEMAS.get(name, {"type": "string"})}
                for name, description in operation.headers.items()
            }
        if status == 201:
            links = _links(operation, operations)
            if links:
                response["links"] = links
        responses[str(status)] = response
    for status in sorted(operation.errors):
        if status in _ERRORS:
            responses[str(status)] = _ERRORS[status][0]  # apispec turns a name into a $ref
        else:
            content = {"application/json": {"schema": schemas.error(ErrorMessage)}}
            responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": content}
    return responses


def _links(created: Operation, operations: Sequence[Operation]) -> dict[str, Any]:
    """From a 201 to the operations on the new resource: its tag's `.../{id}` paths."""
    return {
        other.name: {"operationId": other.name, "parameters": {"id": "$response.body#/id"}}
        for other in operations
        if other.tag == created.tag and other.path.endswith("/{id}")
    }


def _header_parameters(operation: Operation) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": description,
            "schema": _REQUEST_HEADER_SCHEMAS.get(name, {"type": "string"}),
        }
        for name, description in operation.request_headers.items()
    ]


def _parameters(model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", ()))
    found = []
    for name, field in schema["properties"].items():
        field = _wire(field)
        field.pop("title", None)
        parameter: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required}
        if "description" in field:
            parameter["description"] = field.pop("description")
        parameter["schema"] = field
        found.append(parameter)
    return found


def _wire(field: dict[str, Any]) -> dict[str, Any]:
    """A query parameter as it travels: `X | None = None` is a parameter one may leave out,
    since a query string has no null to send."""
    variants = field.get("anyOf")
    if field.get("default", ...) is not None or not variants:
        return dict(field)
    others = [variant for variant in variants if variant != {"type": "null"}]
    if len(others) != 1:
        return dict(field)
    rest = {key: value for key, value in field.items() if key not in ("anyOf", "default")}
    return {**others[0], **rest}
