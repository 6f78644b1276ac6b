"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from keybroker.api.body import StrictRoute
from keybroker.api.deps import services
from keybroker.api.problems import database_unavailable
from keybroker.api.schema import responses
from keybroker.api.services import Services
from keybroker.errors import AuditChainAlarm, Sealed

router = APIRouter(tags=["health"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503))
def readyz(svc: Svc) -> dict[str, str]:
    """Ready to serve keys: database reachable and key store unsealed (503 ``Backend unavailable``
    with ``Retry-After`` naming the database, or ``Service sealed``, otherwise)."""
    try:
        with svc.db.session() as s:
            s.execute(text("SELECT 1"))
        st = svc.barrier.status()
    except Exception as exc:  # noqa: BLE001 - any database failure means not ready
        reason = svc.db.availability.failed(exc) or f"it failed ({type(exc).__name__})"
        raise database_unavailable(reason) from None
    if not st.initialized:
        raise Sealed("the key store is not initialized: run 'keybroker operator init'")
    if st.sealed:
        raise Sealed(f"the key store is sealed ({st.progress}/{st.threshold} unseal shares given)")
    if (alarm := svc.checkpointer.guard.alarm) is not None:
        raise AuditChainAlarm(f"the audit chain cannot be authenticated: {alarm}")
    svc.keystore.health()
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
