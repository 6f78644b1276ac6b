"""The FastAPI application: routers, the problem mapper and the cross-cutting middleware."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keybroker import __version__
from keybroker.api import problems, schema
from keybroker.api.body import StrictRoute
from keybroker.api.deps import actor_of, bearer
from keybroker.api.routers import attest_v1, attestation_v1, health, kbs_v0, kbs_v1, pccs_v4, sys, transfer_v1
from keybroker.api.services import Services
from keybroker.audit import log as audit
from keybroker.errors import KeybrokerError

log = logging.getLogger("keybroker.api")

MAX_BODY = 1024 * 1024
_JSON_TYPES = ("application/json",)
_SEALED_PREFIXES = ("/kbs/v1/keys", "/kbs/v1/key-transfer-policies")
#: The metrics' route label of requests that matched no route.
_UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


#: Every router, in the order routes are matched: the workload-facing ones (every release) first.
ROUTERS: tuple[APIRouter, ...] = (
    transfer_v1.router,
    kbs_v0.router,
    attest_v1.router,
    attestation_v1.router,
    health.router,
    kbs_v1.router,
    sys.router,
    pccs_v4.router,
)


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


class CrossCutting:
    """Media type and sealed checks before routing; metrics and the audit of failed admin calls after.

    A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task group and a streamed
    response per request, which showed up in ``bench/transfer.py``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        services: Services,
        requests: Counter,
        latency: Histogram,
    ) -> None:
        self.app = app
        self.services = services
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        early = self._refuse(scope, method, path)
        if early is not None:
            await early(scope, receive, send)
            self._finish(scope, method, path, early.status_code, start)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route_path = getattr(scope.get("route"), "path", path)
                # Audited before the client hears of it. Transfers are audited by the release
                # service, with the evidence and the reasons.
                if status >= 400 and path.startswith("/kbs/v1/") and not route_path.endswith("/transfer"):
                    await run_in_threadpool(self._audit_failure, scope, route_path, status)
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._finish(scope, method, path, status, start)

    def _refuse(self, scope: Scope, method: str, path: str) -> Response | None:
        headers = Headers(scope=scope)
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if method in ("POST", "PUT", "PATCH") and path.startswith("/kbs/v1/") and has_body:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in _JSON_TYPES:
                return problems.problem(
                    415,
                    "Unsupported media type",
                    "send the body as Content-Type: application/json",
                    Request(scope),
                )
        if path.startswith(_SEALED_PREFIXES) and self.services.barrier.sealed:
            st = self.services.barrier.status()
            why = "is not initialized" if not st.initialized else "is sealed"
            return problems.problem(
                503, "Service sealed", f"the key store {why}: key operations are unavailable", Request(scope)
            )
        return None

    def _finish(self, scope: Scope, method: str, path: str, status: int, start: float) -> None:
        # the route's template, never the raw path: a label per path asked for would let anyone
        # grow the metrics without bound
        route_path: str = getattr(scope.get("route"), "path", None) or _UNMATCHED
        if method not in _METHODS:
            method = "other"
        self.requests.labels(method, route_path, str(status)).inc()
        self.latency.labels(method, route_path).observe(time.perf_counter() - start)

    def _audit_failure(self, scope: Scope, route_path: str, status: int) -> None:
        request = Request(scope)
        principal: Any = getattr(request.state, "principal", None)
        if principal is None:
            # The request may have failed before its token was checked (e.g. a bad body).
            try:
                token = bearer(request)
                principal = self.services.tokens.verify(token) if token else None
            except KeybrokerError:
                principal = None
        actor = actor_of(principal) if principal is not None else "anonymous"
        outcome = "denied" if status in (401, 403) else "failed"
        params: dict[str, str] = scope.get("path_params", {})
        try:
            with self.services.db.session() as s:
                audit.append(
                    s,
                    actor=actor,
                    action=f"{scope['method']} {route_path}",
                    object_id=params.get("key_id") or params.get("policy_id"),
                    outcome=outcome,
                    reason=getattr(request.state, "problem_detail", None) or f"HTTP {status}",
                )
        except Exception as exc:  # noqa: BLE001 - the response stands; the failure is logged
            log.error("could not write the audit record for a failed request: %s", type(exc).__name__)


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
    schema.document(app)

    app.add_middleware(
        CrossCutting,
        services=services,
        requests=requests,
        latency=latency,
    )
    app.add_middleware(BodyLimit)
    for router in ROUTERS:
        app.include_router(router)
    loose = [r.path for r in app.routes if isinstance(r, APIRoute) and not isinstance(r, StrictRoute)]
    if loose:
        # every JSON body goes through the strict reader: a router without its route class would not
        raise RuntimeError(f"routes without StrictRoute: {', '.join(loose)}")
    return app
