"""The FastAPI application: routers, the problem mapper and the cross-cutting middleware."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keybroker import __version__
from keybroker.api import problems
from keybroker.api.deps import actor_of, bearer
from keybroker.api.routers import attest_v1, attestation_v1, health, kbs_v0, kbs_v1, pccs_v4, sys, transfer_v1
from keybroker.api.services import Services
from keybroker.audit import log as audit
from keybroker.errors import KeybrokerError

log = logging.getLogger("keybroker.api")

MAX_BODY = 1024 * 1024
_JSON_TYPES = ("application/json",)
_SEALED_PREFIXES = ("/kbs/v1/keys", "/kbs/v1/key-transfer-policies")


class BodyLimit:
    """Reject bodies over ``limit`` bytes with 413, whether or not Content-Length is honest."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = problems.problem(413, "Payload too large", f"the request body exceeds {self.limit} bytes")
        await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="keybroker",
        version=__version__,
        description="Key Broker Service and Attestation Service for confidential computing.",
    )
    app.state.services = services
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    requests = Counter(
        "keybroker_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "keybroker_http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route"],
        registry=registry,
    )
    problems.install(app)

    @app.middleware("http")
    async def _cross_cutting(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        path = request.url.path
        has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
        if request.method in ("POST", "PUT", "PATCH") and path.startswith("/kbs/v1/") and has_body:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in _JSON_TYPES:
                response: Response = problems.problem(
                    415, "Unsupported media type", "send the body as Content-Type: application/json", request
                )
                return _finish(request, response, start)
        if path.startswith(_SEALED_PREFIXES) and services.barrier.sealed:
            st = services.barrier.status()
            why = "is not initialized" if not st.initialized else "is sealed"
            response = problems.problem(
                503, "Service sealed", f"the key store {why}: key operations are unavailable", request
            )
            return _finish(request, response, start)
        response = await call_next(request)
        return _finish(request, response, start)

    def _finish(request: Request, response: Response, start: float) -> Response:
        route = request.scope.get("route")
        route_path: str = getattr(route, "path", request.url.path)
        requests.labels(request.method, route_path, str(response.status_code)).inc()
        latency.labels(request.method, route_path).observe(time.perf_counter() - start)
        # transfers are audited by the release service, with the evidence and the reasons
        if (
            response.status_code >= 400
            and request.url.path.startswith("/kbs/v1/")
            and not route_path.endswith("/transfer")
        ):
            _audit_failure(request, route_path, response.status_code)
        return response

    def _audit_failure(request: Request, route_path: str, status: int) -> None:
        principal: Any = getattr(request.state, "principal", None)
        if principal is None:
            # The request may have failed before its token was checked (e.g. a bad body).
            try:
                token = bearer(request)
                principal = services.tokens.verify(token) if token else None
            except KeybrokerError:
                principal = None
        actor = actor_of(principal) if principal is not None else "anonymous"
        outcome = "denied" if status in (401, 403) else "failed"
        try:
            with services.db.session() as s:
                audit.append(
                    s,
                    actor=actor,
                    action=f"{request.method} {route_path}",
                    object_id=request.path_params.get("key_id") or request.path_params.get("policy_id"),
                    outcome=outcome,
                    reason=getattr(request.state, "problem_detail", None) or f"HTTP {status}",
                )
        except Exception as exc:  # noqa: BLE001 - the response stands; the failure is logged
            log.error("could not write the audit record for a failed request: %s", type(exc).__name__)

    app.add_middleware(BodyLimit)
    app.include_router(health.router)
    app.include_router(sys.router)
    app.include_router(kbs_v1.router)
    app.include_router(transfer_v1.router)
    app.include_router(attest_v1.router)
    app.include_router(kbs_v0.router)
    app.include_router(pccs_v4.router)
    app.include_router(attestation_v1.router)
    return app
