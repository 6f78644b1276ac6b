"""Operator endpoints: init, unseal, seal, status (Vault-style).

``/sys/v1/unseal`` and ``/sys/v1/seal-status`` are unauthenticated, as in Vault: holding a
threshold of shares is the operators' authentication. See :mod:`keybroker.seal.unseal`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from sqlalchemy.orm import Session

from keybroker.api.body import StrictRoute
from keybroker.api.deps import require, services
from keybroker.api.schema import responses
from keybroker.api.services import Services
from keybroker.audit import log as audit
from keybroker.auth.caller import Caller
from keybroker.errors import InvalidInput
from keybroker.limits import client_key
from keybroker.seal.adoption import Report
from keybroker.seal.barrier import SealStatus

router = APIRouter(prefix="/sys/v1", tags=["operator"], route_class=StrictRoute)
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
    key: str | None = Field(default=None, min_length=1, max_length=256, description="one base64 unseal share")
    reset: StrictBool = Field(
        default=False,
        description="true: discard the shares given so far in this attempt (Vault's reset); give no key",
    )


class StatusOut(BaseModel):
    initialized: bool
    sealed: bool
    seal_type: str | None
    shares: int
    threshold: int
    progress: int = Field(
        description="shares given so far in the current unseal attempt, on this replica (each is unsealed on its own)"
    )
    t: int = Field(description="Vault's name: the threshold")
    n: int = Field(description="Vault's name: the number of shares")
    nonce: str = Field(
        description='the current unseal attempt\'s id ("" when no share is pending); a new one after a reset or a failed attempt'
    )


def _status(st: SealStatus) -> StatusOut:
    return StatusOut(**st.__dict__, t=st.threshold, n=st.shares)


@router.get("/seal-status", response_model=StatusOut)
def seal_status(svc: Svc) -> StatusOut:
    return _status(svc.barrier.status())


@router.post("/init", response_model=InitOut, responses=responses(409, 503))
def init(body: InitIn, svc: Svc) -> InitOut:
    """Initialize the key store once. Answers 409 when already initialized.

    The admin token is minted first and the init is audited in the transaction that stores the
    seal configuration: once the store is initialized, nothing is left to fail and lose the shares."""
    token = svc.tokens.mint("initial-admin", ["*:*"], ttl=timedelta(hours=24))
    recovery = svc.barrier.auto_seal is not None

    def audited(s: Session) -> None:
        details = {"shares": body.shares, "threshold": body.threshold, "recovery": recovery}
        audit.append(s, actor="operator", action="sys.init", outcome="success", details=details)

    result = svc.barrier.init_shamir(body.shares, body.threshold, also=audited)
    return InitOut(
        unseal_shares=result.shares, threshold=result.threshold, admin_token=token, recovery=result.recovery
    )


@router.post(
    "/unseal",
    response_model=StatusOut,
    responses=responses(409, 429, 503),
)
def unseal(body: UnsealIn, request: Request, svc: Svc) -> StatusOut:
    """Give one unseal share (``key``), or discard the shares given so far (``reset``).

    A malformed or repeated share is refused at once; a wrong one when the threshold is reached,
    which discards the attempt's shares. Refusals and resets are audited (without the share) and
    limited per client address and in all (429 with ``Retry-After``).
    """
    client = client_key(request.client.host if request.client else None)
    if body.reset:
        if body.key is not None:
            raise InvalidInput("give either key or reset, not both", field="reset")
        return _status(svc.unseal.reset(client))
    if body.key is None:
        raise InvalidInput("key (one base64 unseal share) is required, or reset: true", field="key")
    return _status(svc.unseal.submit(body.key, client))


class IntegrityFindingOut(BaseModel):
    table: str = Field(description="transfer_policies, keys, kbs_resources or tpm_aks")
    id: str = Field(description="the row's id (a resource's path)")
    state: str = Field(
        description="untagged (written before integrity tags, or outside keybroker), changed (its tag does "
        "not verify: changed in the database), or adopted (tagged by this request)"
    )
    sha256: str = Field(
        description="SHA-256 of the JCS serialization of what the tag covers, as the row is now"
    )


class IntegrityOut(BaseModel):
    verified: dict[str, int] = Field(description="rows whose integrity tag verifies, per table")
    findings: list[IntegrityFindingOut] = Field(
        description="rows that are never released on until adopted (or, after an adoption, the rows adopted)"
    )


class AdoptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_changed: StrictBool = Field(
        default=False,
        description="also adopt rows whose tag does not verify (changed in the database): only after "
        "reviewing each",
    )


def _integrity(report: Report) -> IntegrityOut:
    return IntegrityOut(
        verified=report.verified, findings=[IntegrityFindingOut(**f.to_dict()) for f in report.findings]
    )


@router.get("/integrity", response_model=IntegrityOut, responses=responses(503))
def integrity_status(svc: Svc, caller: Caller = Depends(require("sys:integrity"))) -> IntegrityOut:
    """The rows that decide a release (transfer policies, keys, /kbs/v0 resources, approved TPM AKs)
    whose integrity
    tag is missing or does not verify: those are never released on."""
    return _integrity(svc.integrity.report())


@router.post("/integrity/adopt", response_model=IntegrityOut, responses=responses(503))
def integrity_adopt(
    svc: Svc, body: AdoptIn | None = None, caller: Caller = Depends(require("sys:integrity"))
) -> IntegrityOut:
    """Tag the untagged rows as they are now (and, with include_changed, the changed ones), after
    an administrator reviewed them; audited with each row's content digest."""
    include = body.include_changed if body is not None else False
    return _integrity(svc.integrity.adopt(actor=caller.actor, include_changed=include))


@router.post("/seal", response_model=StatusOut)
def seal(svc: Svc, caller: Caller = Depends(require("sys:seal"))) -> StatusOut:
    try:  # recorded first, so that the record is signed while the key is still at hand
        with svc.db.session() as s:
            audit.append(s, actor=caller.actor, action="sys.seal", outcome="success")
    finally:  # sealed even when the audit record cannot be written
        svc.barrier.seal()
    return _status(svc.barrier.status())
