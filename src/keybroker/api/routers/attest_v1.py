"""Attestation service over HTTP: nonces, attestation-result tokens (EAR JWTs), the JWKS."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from keybroker.api.body import StrictRoute
from keybroker.api.deps import services
from keybroker.api.schema import BASE64_PATTERN, NONCE_PATTERN, responses
from keybroker.api.services import Services
from keybroker.attestation import nonces
from keybroker.errors import InvalidInput

router = APIRouter(tags=["attestation"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]


class NonceOut(BaseModel):
    val: str = Field(description="base64 of 32 random bytes; single use")
    iat: int
    exp: int


class AttestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tee: Literal["sgx", "tdx"]
    evidence: str = Field(
        min_length=4, max_length=256 * 1024, pattern=BASE64_PATTERN, description="base64 quote"
    )
    nonce: str = Field(
        pattern=NONCE_PATTERN, description="the val of a nonce from /attestation/v1/nonce (base64, 32 bytes)"
    )
    user_data: str = Field(
        max_length=16 * 1024,
        pattern=BASE64_PATTERN,
        description="base64 data bound by REPORTDATA = SHA-512(nonce || user_data)",
    )


class AttestOut(BaseModel):
    token: str
    status: str = Field(description="ear.status: affirming, warning or contraindicated")


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64", field=field) from None


@router.post("/attestation/v1/nonce", response_model=NonceOut, responses=responses(429))
def new_nonce(svc: Svc) -> NonceOut:
    issued = svc.attestation.nonce()
    return NonceOut(
        val=issued.b64, iat=int(issued.issued_at.timestamp()), exp=int(issued.expires_at.timestamp())
    )


@router.post("/attestation/v1/attest", response_model=AttestOut, responses=responses(403, 503))
def attest(body: AttestIn, svc: Svc) -> AttestOut:
    """Verify evidence bound to a nonce and user data; answer a signed EAR (ES384)."""
    result = svc.attestation.attest_v1(
        body.tee,
        _b64(body.evidence, "evidence"),
        nonces.decode_nonce(body.nonce, "nonce"),
        _b64(body.user_data, "user_data"),
        actor="workload",
    )
    return AttestOut(token=result.token, status=result.decision.ear_status)


@router.get("/.well-known/jwks.json")
def jwks(svc: Svc) -> dict[str, object]:
    """Public keys that verify keybroker's attestation tokens (current first)."""
    return svc.attestation.jwks()
