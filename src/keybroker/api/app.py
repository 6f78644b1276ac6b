"""The FastAPI application: routers, the problem mapper and the cross-cutting middleware."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keybroker import __version__
from keybroker.api import metrics, problems, schema
from keybroker.api.body import StrictRoute
from keybroker.api.deps import actor_of, bearer
from keybroker.api.routers import (
    attestation_v1,
    health,
    kbs_v0,
    kbs_v1,
    kds,
    pccs_v4,
    roles_v1,
    sys,
    tpm_v1,
    transfer_v1,
    well_known,
)
from keybroker.api.services import Services
from keybroker.audit import log as audit
from keybroker.errors import KeybrokerError

log = logging.getLogger("keybroker.api")

MAX_BODY = 1024 * 1024
_JSON_TYPES = ("application/json",)
_SEALED_PREFIXES = ("/kbs/v1/keys", "/kbs/v1/key-transfer-policies")
#: Refused while the audit chain cannot be authenticated (every other key operation is refused by
#: ``audit.append``, which it needs).
_KEY_PREFIXES = (*_SEALED_PREFIXES, "/kbs/v0/")
#: The audit action of a failed admin call, by method and route template: every route under
#: /kbs/v1/ must be here (``create_app`` checks). None: not audited here (public, or audited by its
#: service with more detail). Requests that match no route are counted in the metrics, not audited:
#: the log is not a log of request text.
FAILURE_ACTIONS: dict[tuple[str, str], str | None] = {
    ("GET", "/kbs/v1/version"): None,
    ("POST", "/kbs/v1/keys"): "key.create",
    ("GET", "/kbs/v1/keys"): "key.search",
    ("GET", "/kbs/v1/keys/{key_id}"): "key.retrieve",
    ("DELETE", "/kbs/v1/keys/{key_id}"): "key.delete",
    ("POST", "/kbs/v1/keys/{key_id}/certificate"): "key.certify",
    ("GET", "/kbs/v1/keys/{key_id}/certificate"): "key.certificate.retrieve",
    ("POST", "/kbs/v1/keys/{key_id}/transfer"): None,  # the release service audits each decision
    ("POST", "/kbs/v1/key-transfer-policies"): "policy.create",
    ("GET", "/kbs/v1/key-transfer-policies"): "policy.search",
    ("GET", "/kbs/v1/key-transfer-policies/{policy_id}"): "policy.retrieve",
    ("PUT", "/kbs/v1/key-transfer-policies/{policy_id}"): "policy.update",
    ("DELETE", "/kbs/v1/key-transfer-policies/{policy_id}"): "policy.delete",
    ("GET", "/kbs/v1/audit"): "audit.read",
    ("GET", "/kbs/v1/audit/checkpoint"): "audit.read",
    ("GET", "/kbs/v1/tokens"): "token.search",
    ("POST", "/kbs/v1/tokens"): "token.create",
    ("DELETE", "/kbs/v1/tokens/{jti}"): "token.revoke",
    ("GET", "/kbs/v1/roles"): "role.search",
    ("POST", "/kbs/v1/roles"): "role.create",
    ("GET", "/kbs/v1/roles/{role}"): "role.retrieve",
    ("PUT", "/kbs/v1/roles/{role}"): "role.update",
    ("DELETE", "/kbs/v1/roles/{role}"): "role.delete",
    ("POST", "/kbs/v1/tpm/enrolments"): "tpm.ak.enrol",
    ("POST", "/kbs/v1/tpm/enrolments/{enrolment_id}/activation"): "tpm.ak.activate",
    ("GET", "/kbs/v1/tpm/aks"): "tpm.ak.search",
    ("GET", "/kbs/v1/tpm/aks/{name}"): "tpm.ak.retrieve",
    ("POST", "/kbs/v1/tpm/aks/{name}/approval"): "tpm.ak.approve",
    ("POST", "/kbs/v1/tpm/aks/{name}/revocation"): "tpm.ak.revoke",
}
#: The metrics' route label of requests that matched no route.
_UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


#: Every router, in the order routes are matched: the workload-facing ones (every release) first.
ROUTERS: tuple[APIRouter, ...] = (
    transfer_v1.router,
    kbs_v0.router,
    attestation_v1.router,
    well_known.router,
    health.router,
    kbs_v1.router,
    roles_v1.router,
    tpm_v1.router,
    sys.router,
    pccs_v4.router,
    kds.router,
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
                # Audited before the client hears of it, under the route's action.
                route_path = getattr(scope.get("route"), "path", None)
                action = FAILURE_ACTIONS.get((method, route_path)) if route_path else None
                if status >= 400 and action is not None:
                    await run_in_threadpool(self._audit_failure, scope, action, status)
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
        alarm = self.services.checkpointer.guard.alarm
        if alarm is not None and path.startswith(_KEY_PREFIXES):
            return problems.problem(
                503,
                "Audit chain alarm",
                f"the audit chain cannot be authenticated: {alarm}; key operations are refused until an "
                "operator checks it ('keybroker audit verify')",
                Request(scope),
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

    def _audit_failure(self, scope: Scope, action: str, status: int) -> None:
        if not self.services.db.availability.up:
            return  # it could not be written (nor waited for): the outage is logged once instead
        request = Request(scope)
        principal: Any = getattr(request.state, "principal", None)
        if principal is None:
            # The request may have failed before its token was checked (e.g. a bad body).
            try:
                token = bearer(request)
                principal = self.services.authn.verify(token) if token else None
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
                    action=action,
                    object_id=params.get("key_id")
                    or params.get("policy_id")
                    or params.get("jti")
                    or params.get("role")
                    or params.get("name")
                    or params.get("enrolment_id"),
                    outcome=outcome,
                    reason=getattr(request.state, "problem_detail", None) or f"HTTP {status}",
                )
        except Exception as exc:  # noqa: BLE001 - the response stands; the failure is logged
            if self.services.db.availability.failed(exc) is None:  # an outage is logged once
                log.error("could not write the audit record for a failed request: %s", type(exc).__name__)


def _api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """Every API route with its full path: FastAPI keeps included routers as one entry of
    ``app.routes`` each, so checks must walk the routes they include."""
    return [
        (rc.path or "", rc.route) for rc in iter_route_contexts(app.routes) if isinstance(rc.route, APIRoute)
    ]


def _check_failure_actions(app: FastAPI) -> None:
    """Every /kbs/v1 route names the audit action of its failures (a programming error otherwise)."""
    for path, route in _api_routes(app):
        if path.startswith("/kbs/v1/"):
            for method in route.methods or ():
                if (method, path) not in FAILURE_ACTIONS:
                    raise RuntimeError(f"{method} {path}: add its audit action to api.app.FAILURE_ACTIONS")


def _check_route_classes(app: FastAPI) -> None:
    """Every JSON body goes through the strict reader (``StrictRoute``) and every console form through
    the strict form reader with its CSRF check (``StrictFormRoute``, only under /ui/): a route
    without its class would not."""
    from keybroker.ui.forms import StrictFormRoute

    loose = []
    for path, r in _api_routes(app):
        is_ui = path == "/ui" or path.startswith("/ui/")
        if is_ui != isinstance(r, StrictFormRoute) or not isinstance(r, StrictRoute):
            loose.append(path)
    if loose:
        raise RuntimeError(
            f"routes without their strict route class (StrictRoute; StrictFormRoute under /ui): {', '.join(loose)}"
        )


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(services.checkpointer.start)
        services.replica.start()
        try:
            yield
        finally:
            await run_in_threadpool(services.replica.stop)
            await run_in_threadpool(services.checkpointer.stop)

    app = FastAPI(
        title="keybroker",
        version=__version__,
        description="Key Broker Service and Attestation Service for confidential computing.",
        lifespan=lifespan,
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
    guard = services.checkpointer.guard
    Gauge(
        "keybroker_audit_chain_alarm",
        "1 while this replica cannot authenticate the audit chain head (it refuses key operations)",
        registry=registry,
    ).set_function(lambda: 0.0 if guard.alarm is None else 1.0)
    Gauge(
        "keybroker_audit_checkpoint_seq",
        "The audit record covered by this replica's newest checkpoint",
        registry=registry,
    ).set_function(lambda: float(cp.seq) if (cp := services.checkpointer.latest) is not None else -1.0)
    metrics.register(registry, services)
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
    if services.settings.console.enabled:
        from keybroker import ui

        ui.install(app, services)
    _check_route_classes(app)
    _check_failure_actions(app)
    return app
