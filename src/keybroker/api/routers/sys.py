"""Operator endpoints: init, unseal, seal, status (Vault-style)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from keybroker.api.deps import require, services
from keybroker.api.services import Services
from keybroker.audit import log as audit
from keybroker.keys.service import Caller
from keybroker.seal.barrier import SealStatus

router = APIRouter(prefix="/sys/v1", tags=["operator"])
Svc = Annotated[Services, Depends(services)]


class InitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shares: StrictInt = Field(default=5, ge=1, le=255)
    threshold: StrictInt = Field(default=3, ge=1, le=255)


class InitOut(BaseModel):
    unseal_shares: list[str]
    threshold: int
    recovery: bool = Field(
        default=False,
        description="true with auto-unseal (HSM / Transit): the shares are recovery shares, for when the seal backend is lost",
    )
    admin_token: str = Field(
        description="a *:* token valid for 24 hours; mint narrower ones with 'keybroker token create'"
    )


class UnsealIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=256, description="one base64 unseal share")


class StatusOut(BaseModel):
    initialized: bool
    sealed: bool
    seal_type: str | None
    shares: int
    threshold: int
    progress: int


def _status(st: SealStatus) -> StatusOut:
    return StatusOut(**st.__dict__)


@router.get("/seal-status", response_model=StatusOut)
def seal_status(svc: Svc) -> StatusOut:
    return _status(svc.barrier.status())


@router.post("/init", response_model=InitOut)
def init(body: InitIn, svc: Svc) -> InitOut:
    """Initialize the key store once. Answers 409 when already initialized."""
    result = svc.barrier.init_shamir(body.shares, body.threshold)
    token = svc.tokens.mint("initial-admin", ["*:*"], ttl=timedelta(hours=24))
    with svc.db.session() as s:
        audit.append(
            s,
            actor="operator",
            action="sys.init",
            outcome="success",
            details={"shares": body.shares, "threshold": body.threshold, "recovery": result.recovery},
        )
    return InitOut(
        unseal_shares=result.shares, threshold=result.threshold, admin_token=token, recovery=result.recovery
    )


@router.post("/unseal", response_model=StatusOut)
def unseal(body: UnsealIn, svc: Svc) -> StatusOut:
    was_sealed = svc.barrier.sealed
    st = svc.barrier.submit_share(body.key)
    if was_sealed and not st.sealed:
        with svc.db.session() as s:
            audit.append(s, actor="operator", action="sys.unseal", outcome="success")
    return _status(st)


@router.post("/seal", response_model=StatusOut)
def seal(svc: Svc, caller: Caller = Depends(require("sys:seal"))) -> StatusOut:
    try:  # recorded first, so that the record is signed while the key is still at hand
        with svc.db.session() as s:
            audit.append(s, actor=caller.actor, action="sys.seal", outcome="success")
    finally:  # sealed even when the audit record cannot be written
        svc.barrier.seal()
    return _status(svc.barrier.status())
