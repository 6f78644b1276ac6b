"""Attestation service API (``/attestation/v1``)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from keybroker.api.body import StrictRoute
from keybroker.api.deps import require, services
from keybroker.api.schema import responses, rfc3339
from keybroker.api.services import Services
from keybroker.auth.caller import Caller
from keybroker.collateral.store import CollateralStore
from keybroker.errors import CollateralError, EvidenceParseError, InvalidInput
from keybroker.tee.dcap.abi import parse_quote
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import quote_fmspc_and_ca
from keybroker.tee.verifier import NO_REPORT_DATA, ExpectedReportData

router = APIRouter(prefix="/attestation/v1", tags=["attestation"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]

# --- POST /attestation/v1/verify ------------------------------------------------------------------

_HEX: Final = re.compile(r"[0-9A-Fa-f]+")
_B64: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")
_MAX_QUOTE_TEXT: Final = 256 * 1024


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quote: str = Field(
        min_length=8, max_length=_MAX_QUOTE_TEXT, description="SGX/TDX DCAP quote, base64 or hex"
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


def _quote_bytes(text: str) -> bytes:
    """Hex or base64 (standard or URL-safe), tied to a quote header: the one reading that is a quote."""
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
    for raw in candidates:
        if len(raw) >= 4 and raw[0] in (3, 4, 5) and raw[1] == 0 and raw[2:4] == b"\x02\x00":
            return raw
    raise InvalidInput("quote: not an SGX/TDX DCAP quote in base64 or hex", field="quote")


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
    """Verify a DCAP quote: the verdict, TCB status, advisories, checks performed and claims.

    Collateral: the body's, else the store's for the quote's FMSPC / PCK CA (valid at ``at``), else
    the in-memory sources (dev PKI). A rejected quote is a 400 problem whose ``check`` names the
    failed step; a 404 names the FMSPC asked for and what is cached.
    """
    raw = _quote_bytes(body.quote)
    at = _at(body.at)
    expected: ExpectedReportData = (
        NO_REPORT_DATA if body.report_data is None else bytes.fromhex(body.report_data)
    )
    collateral: QuoteCollateral | None = None
    if body.collateral is not None:
        try:
            collateral = QuoteCollateral.from_json(json.dumps(body.collateral))
        except CollateralError as exc:
            raise InvalidInput(f"collateral: {exc.detail}", field="collateral") from None
    try:
        tee = parse_quote(raw).tee
        if collateral is None and at is not None:
            collateral = _stored_at(svc, raw, at)
        verified = svc.verifier.verify(tee, raw, expected, at=at, collateral=collateral)
    except EvidenceParseError as exc:
        exc.extra.setdefault("check", "parse")
        raise
    return {
        "verified": True,
        "at": rfc3339(at or datetime.now(UTC)),
        **verified.to_dict(),
        # RFC 3339 with Z, as every timestamp the API sends
        "collateral_expiry": rfc3339(verified.collateral_expiry),
        "tcb_date": rfc3339(verified.tcb_date),
    }


def _stored_at(svc: Services, raw: bytes, at: datetime) -> QuoteCollateral | None:
    """The stored collateral valid at ``at``, or None (then the verifier's own sources decide)."""
    try:
        fmspc, pck_ca, tee = quote_fmspc_and_ca(raw)
        return CollateralStore(svc.db).collateral_for(tee=tee, fmspc=fmspc, pck_ca=pck_ca, at=at)
    except CollateralError:
        return None
