"""What the OpenAPI document promises, kept true to what the server sends.

- Errors are RFC 9457 problems (:class:`Problem`, ``application/problem+json``), never FastAPI's
  422 validation document: a malformed request is a 400. :func:`document` rewrites FastAPI's 422
  into that 400 and adds the 413/415 of JSON bodies and the 401/403 of authenticated routes; routes
  declare the rest (404, 409, 503) with :func:`responses`.
- Timestamps are RFC 3339 in UTC with ``Z`` (:data:`Timestamp`), whichever database they came from
  (SQLite hands back naive datetimes; every one we store is UTC).
- Integers that reach the database stay within its 64-bit range (:data:`DB_INT_MAX`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import FastAPI, Path
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.json_schema import JsonSchemaMode

PROBLEM_JSON: Final = "application/problem+json"
#: The largest integer SQLite and PostgreSQL (BIGINT) store.
DB_INT_MAX: Final = 2**63 - 1

#: Standard base64 with padding, as ``base64.b64decode(validate=True)`` takes it.
BASE64_PATTERN: Final = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
#: A nonce's ``val``: base64 of 32 bytes.
NONCE_PATTERN: Final = r"^[A-Za-z0-9+/]{43}=$"
UUID_PATTERN: Final = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

#: A key or policy id in a path: a UUID (anything else is a 404, as for an unknown id).
KeyId = Annotated[str, Path(description="the key's id (a UUID)", json_schema_extra={"format": "uuid"})]
PolicyId = Annotated[
    str, Path(description="the key-transfer policy's id (a UUID)", json_schema_extra={"format": "uuid"})
]

_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Invalid input: a malformed body, parameter or header (``field`` names it)",
    401: "Unauthenticated: no bearer token, or one that does not verify",
    403: "Forbidden: the token lacks the permission (``permission``), or a policy denied (``reasons``)",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Payload too large: the body exceeds 1 MiB",
    415: "Unsupported media type: JSON bodies are application/json in UTF-8",
    429: "Too many requests: a cap or rate limit was reached; ``Retry-After`` says when to try again",
    503: "Unavailable: the key store is sealed, or a backend is unreachable",
}


class Problem(BaseModel):
    """An RFC 9457 problem document. Some problems add members: ``errors`` (every invalid field),
    ``reasons`` (policy denials), ``check`` (the failed verification step), ``permission``."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(examples=["urn:keybroker:problem:invalid-input"])
    title: str = Field(examples=["Invalid input"])
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = Field(default=None, description="the request path")
    field: str | None = Field(default=None, description="the member, parameter or header at fault")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route for the problems it answers with."""
    return {code: _problem_response(code) for code in codes}


def _problem_response(code: int) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS[code],
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


_MODELS: dict[str, tuple[type[BaseModel], JsonSchemaMode]] = {}


def ref(model: type[BaseModel], mode: JsonSchemaMode = "validation") -> dict[str, str]:
    """A reference to ``model`` in the document's components, for bodies a route reads by itself
    (``openapi_extra``, ``validation``) or answers without a ``response_model`` (``serialization``)."""
    _MODELS[model.__name__] = (model, mode)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body that the route decodes itself."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": ref(model)}}}}


def rfc3339(value: datetime) -> str:
    """``2026-05-01T12:00:00.123456Z``: UTC, ``Z``; a naive value is a UTC one read back from SQLite."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-05-01T12:00:00Z"]}),
]


def document(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe the problems the server sends (see the module docstring)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for item in doc.get("paths", {}).values():
                for operation in item.values():
                    _problems_of(operation)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            documented: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Problem, "serialization")]
            for model, mode in [*documented, *_MODELS.values()]:
                found = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
                schemas.update(found.pop("$defs", {}))
                schemas[model.__name__] = found
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problems_of(operation: dict[str, Any]) -> None:
    answers: dict[str, Any] = operation.setdefault("responses", {})
    added: set[int] = set()
    if answers.pop("422", None) is not None:
        added.add(400)  # FastAPI adds 422 wherever a parameter or body is validated
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        added |= {400, 413, 415}
    if any("bearer" in requirement for requirement in operation.get("security", [])):
        added |= {401, 403}
    for code in sorted(added):
        answers.setdefault(str(code), _problem_response(code))
    operation["responses"] = dict(sorted(answers.items()))
