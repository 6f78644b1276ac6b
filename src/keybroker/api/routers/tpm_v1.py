"""TPM attestation keys over ``/kbs/v1/tpm``: enrolment through the EK (``tpm_aks:create``), and the
administration of enrolled AKs (``tpm_aks:search``, ``:retrieve``, ``:approve``, ``:revoke``).

Enrolment is two calls by the same token: ``POST /kbs/v1/tpm/enrolments`` with the EK, its
certificate and the AK gives a credential only that TPM can activate; ``POST .../{id}/activation``
with the secret ``TPM2_ActivateCredential`` recovered registers the AK (``docs/tpm.md``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from keybroker.api.body import StrictRoute
from keybroker.api.deps import principal, require, services
from keybroker.api.schema import UUID_PATTERN, Timestamp, responses
from keybroker.api.services import Services
from keybroker.auth.caller import Caller
from keybroker.auth.tokens import Principal
from keybroker.errors import InvalidInput
from keybroker.tpmaks.service import AkRecord

router = APIRouter(prefix="/kbs/v1/tpm", route_class=StrictRoute, tags=["tpm"])

Svc = Annotated[Services, Depends(services)]
AkName = Annotated[
    str,
    Path(pattern=r"^[0-9a-fA-F]{44,132}$", description="the AK's Name, hex (nameAlg || digest)"),
]
_B64 = r"^[A-Za-z0-9+/]*={0,2}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrolmentIn(_In):
    ek_public: str = Field(max_length=4096, pattern=_B64, description="the EK's TPM2B_PUBLIC, base64")
    ek_certificate: str = Field(
        max_length=16384, pattern=_B64, description="the EK certificate (DER), base64"
    )
    ak_public: str = Field(max_length=4096, pattern=_B64, description="the AK's TPM2B_PUBLIC, base64")
    label: str | None = Field(default=None, min_length=1, max_length=128, description="e.g. the host name")


class EnrolmentOut(BaseModel):
    id: str
    ak_name: str
    credential_blob: str = Field(description="TPM2B_ID_OBJECT, base64: for TPM2_ActivateCredential")
    encrypted_secret: str = Field(description="TPM2B_ENCRYPTED_SECRET, base64")
    expires_at: Timestamp


class ActivationIn(_In):
    secret: str = Field(
        min_length=4,
        max_length=128,
        pattern=_B64,
        description="what TPM2_ActivateCredential returned, base64",
    )


class RevocationIn(_In):
    reason: str | None = Field(default=None, min_length=1, max_length=512)


class AkOut(BaseModel):
    name: str
    status: Literal["pending", "approved", "revoked"]
    label: str | None
    key_type: str
    attributes: list[str]
    ek_issuer: str
    ek_root: Literal["manufacturer", "dev"]
    ek_root_sha256: str
    enrolled_by: str
    enrolled_at: Timestamp
    approved_by: str | None
    approved_at: Timestamp | None
    revoked_by: str | None
    revoked_at: Timestamp | None
    revoke_reason: str | None
    public: str = Field(description="the AK's TPMT_PUBLIC, base64")
    ek_certificate: str = Field(description="the EK certificate (DER), base64")


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not base64", field=field) from None


def _out(r: AkRecord) -> AkOut:
    return AkOut(
        name=r.name,
        status=r.status,
        label=r.label,
        key_type=r.key_type,
        attributes=list(r.attributes),
        ek_issuer=r.ek_issuer,
        ek_root=r.ek_root,
        ek_root_sha256=r.ek_root_sha256,
        enrolled_by=r.enrolled_by,
        enrolled_at=r.enrolled_at,
        approved_by=r.approved_by,
        approved_at=r.approved_at,
        revoked_by=r.revoked_by,
        revoked_at=r.revoked_at,
        revoke_reason=r.revoke_reason,
        public=base64.b64encode(r.public).decode(),
        ek_certificate=base64.b64encode(r.ek_certificate).decode(),
    )


@router.post("/enrolments", status_code=201, response_model=EnrolmentOut, responses=responses(409))
def start_enrolment(
    body: EnrolmentIn, svc: Svc, caller: Caller = Depends(require("tpm_aks:create"))
) -> EnrolmentOut:
    """Check the EK certificate (to a configured TPM manufacturer root) and the AK (a restricted
    signing key bound to its TPM), and make a credential for the AK protected to the EK."""
    e = svc.tpm_aks.start_enrolment(
        ek_public=_b64(body.ek_public, "ek_public"),
        ek_certificate=_b64(body.ek_certificate, "ek_certificate"),
        ak_public=_b64(body.ak_public, "ak_public"),
        label=body.label,
        actor=caller.actor,
    )
    return EnrolmentOut(
        id=e.id,
        ak_name=e.ak_name,
        credential_blob=base64.b64encode(e.credential_blob).decode(),
        encrypted_secret=base64.b64encode(e.encrypted_secret).decode(),
        expires_at=e.expires_at,
    )


@router.post(
    "/enrolments/{enrolment_id}/activation",
    status_code=201,
    response_model=AkOut,
    responses=responses(404, 409),
)
def activate(
    enrolment_id: Annotated[str, Path(pattern=UUID_PATTERN)],
    body: ActivationIn,
    svc: Svc,
    caller: Caller = Depends(require("tpm_aks:create")),
    p: Principal = Depends(principal),
) -> AkOut:
    """The secret TPM2_ActivateCredential recovered: the AK is registered, pending an administrator's
    approval (approved at once when the caller also holds ``tpm_aks:approve``). One attempt."""
    record = svc.tpm_aks.activate(
        enrolment_id, _b64(body.secret, "secret"), actor=caller.actor, approve=p.allows("tpm_aks:approve")
    )
    return _out(record)


@router.get("/aks", response_model=list[AkOut])
def list_aks(
    svc: Svc,
    caller: Caller = Depends(require("tpm_aks:search")),
    status: Annotated[Literal["pending", "approved", "revoked"] | None, Query()] = None,
) -> list[AkOut]:
    return [_out(r) for r in svc.tpm_aks.list(status=status, actor=caller.actor)]


@router.get("/aks/{name}", response_model=AkOut, responses=responses(404))
def get_ak(name: AkName, svc: Svc, caller: Caller = Depends(require("tpm_aks:retrieve"))) -> AkOut:
    return _out(svc.tpm_aks.get(name, actor=caller.actor))


@router.post("/aks/{name}/approval", response_model=AkOut, responses=responses(404, 409))
def approve_ak(name: AkName, svc: Svc, caller: Caller = Depends(require("tpm_aks:approve"))) -> AkOut:
    """Trust a pending AK; for an approved one, forget its clock history (after a TPM2_Clear)."""
    return _out(svc.tpm_aks.approve(name, actor=caller.actor))


@router.post("/aks/{name}/revocation", response_model=AkOut, responses=responses(404))
def revoke_ak(
    name: AkName, body: RevocationIn, svc: Svc, caller: Caller = Depends(require("tpm_aks:revoke"))
) -> AkOut:
    """Never trust this AK again, whatever certificate it may carry."""
    return _out(svc.tpm_aks.revoke(name, actor=caller.actor, reason=body.reason))
