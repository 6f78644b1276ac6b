"""The one place where errors become HTTP responses: RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from keybroker.errors import AuditChainAlarm, BackendUnavailable, KeybrokerError, Sealed
from keybroker.store.db import RETRY_AFTER_SECONDS, Database, unavailable_reason

log = logging.getLogger("keybroker.api")

PROBLEM_JSON = "application/problem+json"


def _slug(title: str) -> str:
    return title.lower().replace(" ", "-")


def problem(
    status: int, title: str, detail: str, request: Request | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:keybroker:problem:{_slug(title)}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
        request.state.problem_detail = detail
    body.update(extra)
    headers = {"WWW-Authenticate": 'Bearer realm="keybroker"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def database_unavailable(reason: str) -> BackendUnavailable:
    """The 503 for a database that cannot serve now (see ``store.db.unavailable_reason``): it names
    the database (no host, no SQL), and ``Retry-After`` says when to ask again. A request refused so
    has changed nothing: its transaction was rolled back (see docs/ha.md for the exceptions)."""
    return BackendUnavailable(
        f"the database is unavailable: {reason}; retry later",
        backend="database",
        retry_after=RETRY_AFTER_SECONDS,
    )


def _database(request: Request) -> Database | None:
    services = getattr(request.app.state, "services", None)
    db = getattr(services, "db", None)
    return db if isinstance(db, Database) else None


def store_error(request: Request, exc: SQLAlchemyError) -> BackendUnavailable | None:
    """The 503 for a database error that means the database is unavailable (recorded in its
    ``Availability``, which logs once per outage), or None for any other (a bug: a 500)."""
    db = _database(request)
    reason = db.availability.failed(exc) if db is not None else unavailable_reason(exc)
    return None if reason is None else database_unavailable(reason)


def is_logged(exc: KeybrokerError) -> bool:
    """Whether ``exc`` is logged as an error: a 5xx, except an unavailable database (logged once per
    outage by ``store.db.Availability``, not per request) and a sealed replica's refusals (its state,
    audited when sealed: a load balancer's health checks would log one a second)."""
    return exc.status >= 500 and exc.extra.get("backend") != "database" and not isinstance(exc, Sealed)


def retry_after(exc: KeybrokerError) -> int | None:
    """The ``Retry-After`` of ``exc``: its own, else that of a backend which is away and comes back
    (the database, a key store, a remote service); an audit chain alarm has none (an operator ends
    it)."""
    value = exc.extra.get("retry_after")
    if value is None and isinstance(exc, BackendUnavailable) and not isinstance(exc, AuditChainAlarm):
        value = RETRY_AFTER_SECONDS
    return value if isinstance(value, int) else None


def _loc(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_detail(exc: RequestValidationError) -> tuple[str, str, list[dict[str, str]]]:
    errors = []
    for err in exc.errors():
        field = _loc(tuple(err.get("loc", ())))
        if err.get("type") == "json_invalid":
            field = "body"
            msg = "the request body is not valid JSON"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        else:
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        errors.append({"field": field, "message": msg})
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return first["field"], f"{first['field']}: {first['message']}", errors


def install(app: FastAPI) -> None:
    @app.exception_handler(KeybrokerError)
    async def _domain(request: Request, exc: KeybrokerError) -> JSONResponse:
        if is_logged(exc):
            log.error("request failed: %s %s: %s", request.method, request.url.path, exc.diagnostics())
        resp = problem(exc.status, exc.title, exc.detail, request, **exc.extra)
        after = retry_after(exc)
        if after is not None:
            resp.headers["Retry-After"] = str(after)
        return resp

    @app.exception_handler(SQLAlchemyError)
    async def _store(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        unavailable = store_error(request, exc)
        if unavailable is None:
            return _internal(request, exc)
        return await _domain(request, unavailable)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, detail, errors = validation_detail(exc)
        return problem(400, "Invalid input", detail, request, field=field, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthenticated", 403: "Forbidden"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, SQLAlchemyError):  # raised outside the routes (a middleware)
            return await _store(request, exc)
        return _internal(request, exc)


def _internal(request: Request, exc: Exception) -> JSONResponse:
    # Never echo the exception: it might hold anything. The log has the type only.
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem(500, "Internal error", "the server failed to handle this request", request)
