"""The attestation service over HTTP (``/attestation/v1``): nonces, attestation results (EAR JWTs)
for evidence bound to a nonce, and the verification of evidence for operators (``verify``).

Every route verifies through the one ``Verifier`` (the TEEs of ``appraisal.registry``); the keys
that verify the EARs are at ``/.well-known/jwks.json`` (``routers.well_known``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from keybroker.api.body import StrictRoute
from keybroker.api.deps import require, services
from keybroker.api.schema import BASE64_PATTERN, NONCE_PATTERN, responses, rfc3339
from keybroker.api.services import Services
from keybroker.appraisal.registry import REGISTRY
from keybroker.attestation import nonces
from keybroker.auth.caller import Caller
from keybroker.errors import CollateralError, EvidenceParseError, InvalidInput
from keybroker.tee.verifier import NO_REPORT_DATA, ExpectedReportData

router = APIRouter(prefix="/attestation/v1", tags=["attestation"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]

#: The TEEs evidence is accepted for (the registry's), as the schema's enum.
TeeName = Literal[(*REGISTRY.names,)]  # type: ignore[valid-type]


class NonceOut(BaseModel):
    val: str = Field(description="base64 of 32 random bytes; single use")
    iat: int
    exp: int


class AttestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tee: TeeName
    evidence: str = Field(
        min_length=4,
        max_length=768 * 1024,
        pattern=BASE64_PATTERN,
        description="base64 evidence: a quote; tpm: keybroker's TPM evidence document; az-*: Trustee's JSON",
    )
    nonce: str = Field(
        pattern=NONCE_PATTERN, description="the val of a nonce from /attestation/v1/nonce (base64, 32 bytes)"
    )
    user_data: str = Field(
        max_length=16 * 1024,
        pattern=BASE64_PATTERN,
        description="base64 data bound with the nonce (SGX/TDX: REPORTDATA = SHA-512(nonce || user_data); "
        "TPM quotes: extraData = SHA-256(nonce || user_data))",
    )


class AttestOut(BaseModel):
    token: str
    status: str = Field(description="ear.status: affirming, warning or contraindicated")


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64", field=field) from None


@router.post("/nonce", response_model=NonceOut, responses=responses(429))
def new_nonce(svc: Svc) -> NonceOut:
    issued = svc.attestation.nonce()
    return NonceOut(
        val=issued.b64, iat=int(issued.issued_at.timestamp()), exp=int(issued.expires_at.timestamp())
    )


@router.post("/attest", response_model=AttestOut, responses=responses(403, 503))
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


# --- POST /attestation/v1/verify ------------------------------------------------------------------

_HEX: Final = re.compile(r"[0-9A-Fa-f]+")
_B64: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")
_MAX_QUOTE_TEXT: Final = 768 * 1024


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quote: str = Field(
        min_length=8,
        max_length=_MAX_QUOTE_TEXT,
        description="evidence, base64 or hex: an SGX/TDX DCAP quote, a TPM evidence document, Trustee's Azure JSON",
    )
    collateral: dict[str, Any] | None = Field(
        default=None,
        description="Collateral in the corpus form (dcap-qvl QuoteCollateralV3); default: the collateral store",
    )
    at: str | StrictInt | StrictFloat | None = Field(
        default=None, description="Verification time: ISO 8601 with a timezone, or UNIX seconds; default now"
    )
    report_data: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Fa-f]{128}$",
        description="Expected REPORTDATA (64 bytes hex); default unchecked",
    )


def _evidence(svc: Services, text: str) -> tuple[str, bytes]:
    """(TEE, evidence) of hex or base64 (standard or URL-safe) text: the one reading that a
    registered TEE's verifier recognizes (for DCAP, tied to a quote header)."""
    t = text.strip()
    candidates: list[bytes] = []
    if _HEX.fullmatch(t) and len(t) % 2 == 0:
        candidates.append(bytes.fromhex(t))
    if _B64.fullmatch(t):
        padded = t + "=" * (-len(t) % 4)
        try:
            candidates.append(
                base64.b64decode(padded, altchars=b"-_" if "-" in t or "_" in t else None, validate=True)
            )
        except binascii.Error:
            pass
    found = svc.verifier.detect(candidates)
    if found is None:
        raise InvalidInput(f"quote: not {REGISTRY.listing()} evidence in base64 or hex", field="quote")
    return found


def _at(value: str | int | float | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInput(f"at: {value} is not a usable UNIX time", field="at") from None
    text = value.strip()
    if re.fullmatch(r"\d{1,12}(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"at: {value!r} is neither ISO 8601 nor UNIX seconds", field="at") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"at: {value!r} has no timezone; add Z or an offset", field="at")
    return parsed.astimezone(UTC)


@router.post("/verify", responses=responses(404))
def verify(
    body: VerifyIn, svc: Svc, caller: Caller = Depends(require("attestation:verify"))
) -> dict[str, Any]:
    """Verify evidence (a DCAP quote): the verdict, TCB status, advisories, checks performed and
    claims.

    Collateral: the body's, else the verifier's sources (the dev PKI's in dev mode, then the
    store's for the quote's FMSPC / PCK CA, valid at ``at``). A rejected quote is a 400 problem
    whose ``check`` names the failed step; a 404 names the FMSPC asked for and what is cached.
    """
    tee, raw = _evidence(svc, body.quote)
    at = _at(body.at)
    expected: ExpectedReportData = (
        NO_REPORT_DATA if body.report_data is None else bytes.fromhex(body.report_data)
    )
    endorsements: object | None = None
    if body.collateral is not None:
        try:
            endorsements = svc.verifier.plugin(tee).endorsements(json.dumps(body.collateral))
        except CollateralError as exc:
            raise InvalidInput(f"collateral: {exc.detail}", field="collateral") from None
    try:
        verified = svc.verifier.verify(tee, raw, expected, at=at, endorsements=endorsements)
    except EvidenceParseError as exc:
        exc.extra.setdefault("check", "parse")
        raise
    # RFC 3339 with Z, as every timestamp the API sends
    report = {k: rfc3339(v) if isinstance(v, datetime) else v for k, v in verified.report().items()}
    return {"verified": True, "at": rfc3339(at or datetime.now(UTC)), **report}
