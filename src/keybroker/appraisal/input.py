"""The appraisal input document: the one JSON document that every policy language sees.

Built from a verified quote (background-check mode) or rebuilt from a verified attestation token
(passport mode, :func:`keybroker.attestation.ear.EarClaims.appraisal_input`); both give the same shape::

    {
      "tee": "sgx" | "tdx",
      "claims": {...},              # SgxClaims.to_dict() / TdxClaims.to_dict(), hex lower case
      "tcb": {"status": "UpToDate", "advisory_ids": [...],
              "collateral_expiry": "<RFC 3339>", "tcb_date": "<RFC 3339>"},
      "sim": false,                 # true: the quote chains to the dev PKI, not to Intel
      "client_permissions": [...] | null   # null: the request presented no token
    }

Documented with examples in ``docs/policies.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal, TypedDict

from keybroker.tee.dcap.verify import VerifiedQuote

__all__ = ["AppraisalInput", "TcbInput", "appraisal_input", "evidence_facts"]


class TcbInput(TypedDict):
    status: str
    advisory_ids: list[str]
    collateral_expiry: str
    tcb_date: str


class AppraisalInput(TypedDict):
    tee: Literal["sgx", "tdx"]
    claims: dict[str, Any]
    tcb: TcbInput
    sim: bool
    client_permissions: list[str] | None


def appraisal_input(verified: VerifiedQuote, *, client_permissions: Collection[str] | None) -> AppraisalInput:
    """The input document for ``verified``; ``client_permissions`` None means no token was presented."""
    return {
        "tee": verified.tee,
        "claims": verified.claims.to_dict(),
        "tcb": {
            "status": verified.status,
            "advisory_ids": list(verified.advisory_ids),
            "collateral_expiry": verified.collateral_expiry.isoformat(),
            "tcb_date": verified.tcb_date.isoformat(),
        },
        "sim": verified.sim,
        "client_permissions": None if client_permissions is None else sorted(set(client_permissions)),
    }


class EvidenceFacts(TypedDict):
    """The few facts the trustworthiness vector is derived from; None: missing or malformed."""

    tee: str | None
    tcb_status: str | None
    debug: bool | None
    sim: bool | None


def evidence_facts(doc: Mapping[str, Any] | None) -> EvidenceFacts:
    """Read tee, TCB status, debug and sim from an input document without trusting its shape."""
    if not isinstance(doc, Mapping):
        return {"tee": None, "tcb_status": None, "debug": None, "sim": None}
    tee = doc.get("tee")
    tcb = doc.get("tcb")
    claims = doc.get("claims")
    status = tcb.get("status") if isinstance(tcb, Mapping) else None
    debug = claims.get("debug") if isinstance(claims, Mapping) else None
    sim = doc.get("sim")
    return {
        "tee": tee if tee in ("sgx", "tdx") else None,
        "tcb_status": status if isinstance(status, str) else None,
        "debug": debug if isinstance(debug, bool) else None,
        "sim": sim if isinstance(sim, bool) else None,
    }
