"""The appraisal input document: the one JSON document that every policy language sees.

Built by one function, :func:`appraisal_input`, from the evidence as an attestation result carries
it (``VerifiedEvidence.annotated_evidence()``; an EAR's ``ear.veraison.annotated-evidence``), so
that background-check mode (a quote verified here) and passport mode (a verified EAR) give the same
document and cannot drift apart::

    {
      "tee": "sgx" | "tdx" | ...,
      "claims": {...},              # the TEE's normalized claims (SgxClaims.to_dict() ...), hex lower case
      "tcb": {"status": "UpToDate", "advisory_ids": [...],
              ...},                 # the TEE's own members; SGX/TDX: "collateral_expiry", "tcb_date" (RFC 3339)
      "sim": false,                 # true: the evidence chains to a dev root, not to the vendor's
      "client_permissions": [...] | null   # null: the request presented no token
    }

Documented with examples in ``docs/policies.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Any, TypedDict

from keybroker import jcs, stages
from keybroker.tee.verifier import VerifiedEvidence

__all__ = ["AppraisalInput", "TcbInput", "appraisal_input", "claims_digest", "evidence_facts"]

#: ``tcb`` members every TEE has.
_COMMON_TCB = ("status", "advisory_ids")


class TcbInput(TypedDict, total=False):
    status: str
    advisory_ids: list[str]
    collateral_expiry: str
    tcb_date: str


class AppraisalInput(TypedDict):
    tee: str
    claims: dict[str, Any]
    tcb: TcbInput
    sim: bool
    client_permissions: list[str] | None


def appraisal_input(
    evidence: VerifiedEvidence | Mapping[str, Any], *, client_permissions: Collection[str] | None
) -> AppraisalInput:
    """The input document for verified evidence, or for the annotated evidence of a verified EAR
    (already checked for shape: ``attestation.ear``). ``client_permissions`` None means no token
    was presented. ``tcb`` members beyond status and advisories are the TEE's, as strings."""
    ev = evidence.annotated_evidence() if isinstance(evidence, VerifiedEvidence) else evidence
    tcb = ev["tcb"]
    tcb_input: dict[str, Any] = {
        "status": str(tcb["status"]),
        "advisory_ids": [str(a) for a in tcb["advisory_ids"]],
    }
    tcb_input.update((k, str(v)) for k, v in tcb.items() if k not in _COMMON_TCB)
    return {
        "tee": str(ev["tee"]),
        "claims": dict(ev["claims"]),
        "tcb": tcb_input,  # type: ignore[typeddict-item]
        "sim": bool(ev["sim"]),
        "client_permissions": None if client_permissions is None else sorted(set(client_permissions)),
    }


@stages.timed("policy")
def claims_digest(claims: VerifiedEvidence | Mapping[str, Any]) -> str:
    """SHA-256 of the JCS form of the verified claims (verified evidence's, or as an EAR carries them):
    what the audit log records of the claims a decision was made on."""
    doc = claims.claims if isinstance(claims, VerifiedEvidence) else claims
    return hashlib.sha256(jcs.dumps(dict(doc))).hexdigest()


class EvidenceFacts(TypedDict):
    """The few facts the trustworthiness vector is derived from; None: missing or malformed."""

    tee: str | None
    tcb_status: str | None
    debug: bool | None
    sim: bool | None


def evidence_facts(doc: Mapping[str, Any] | None) -> EvidenceFacts:
    """Read tee, TCB status, debug and sim from an input document without trusting its shape.
    ``tee`` is None unless it is a non-empty name and the document has claims."""
    if not isinstance(doc, Mapping):
        return {"tee": None, "tcb_status": None, "debug": None, "sim": None}
    tee = doc.get("tee")
    tcb = doc.get("tcb")
    claims = doc.get("claims")
    status = tcb.get("status") if isinstance(tcb, Mapping) else None
    debug = claims.get("debug") if isinstance(claims, Mapping) else None
    sim = doc.get("sim")
    return {
        "tee": tee if isinstance(tee, str) and tee and isinstance(claims, Mapping) else None,
        "tcb_status": status if isinstance(status, str) else None,
        "debug": debug if isinstance(debug, bool) else None,
        "sim": sim if isinstance(sim, bool) else None,
    }
