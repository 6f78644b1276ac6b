"""Built-in policies: what applies when an administrator has not written one.

* :func:`default_attestation_policy`: the attestation service's appraisal of verified evidence
  (``/attestation/v1/attest``, ``/kbs/v0/attest``). Verification already passed; it denies only
  debug enclaves/TDs and what the TEE's policy section adds (TDX: TDs with reserved TD attribute
  bits set, a feature no known TDX module defines), so the EAR says ``affirming`` for a clean TEE,
  ``warning`` for a TCB that is not UpToDate or simulated evidence, and ``contraindicated`` for
  those.
* :func:`default_resource_policy`: the ``/kbs/v0`` resource policy. It allows only an
  ``affirming`` appraisal (TCB UpToDate, not debug, no reserved TD attribute bit) of evidence that
  is not simulated. Stricter than
  Confidential Containers Trustee's default resource policy, which releases resources without
  looking at ``ear.status`` at all (Trustee pitfalls: its default resource policy ignores the attestation status).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from keybroker.appraisal.decision import Decision, decide
from keybroker.appraisal.registry import REGISTRY

__all__ = [
    "DEFAULT_ATTESTATION_POLICY_ID",
    "DEFAULT_RESOURCE_POLICY_ID",
    "default_attestation_policy",
    "default_resource_policy",
]

DEFAULT_ATTESTATION_POLICY_ID: Final = "keybroker:default-attestation-policy"
DEFAULT_RESOURCE_POLICY_ID: Final = "keybroker:default-resource-policy"


def _what(doc: Mapping[str, Any]) -> str:
    registered = REGISTRY.get(doc.get("tee"))
    return "TEE" if registered is None else registered.section.subject


def _unknown_tee(doc: Mapping[str, Any]) -> list[str]:
    """The reason to deny evidence of a TEE this broker does not verify (none for a registered one)."""
    registered = REGISTRY.get(doc.get("tee"))
    if registered is None:
        return [f"the evidence TEE {doc.get('tee')!r} is not {REGISTRY.listing()}"]
    return []


def _section_findings(doc: Mapping[str, Any]) -> list[str]:
    """What the TEE's policy section denies by default (TDX: reserved TD attribute bits set)."""
    registered = REGISTRY.get(doc.get("tee"))
    return [] if registered is None else registered.section.default_findings(doc)


def _vendor(doc: Mapping[str, Any]) -> str:
    registered = REGISTRY.get(doc.get("tee"))
    return "the vendor" if registered is None else registered.section.vendor


def _tcb(doc: Mapping[str, Any]) -> tuple[object, str]:
    tcb = doc.get("tcb")
    status = tcb.get("status") if isinstance(tcb, Mapping) else None
    advisories = tcb.get("advisory_ids") if isinstance(tcb, Mapping) else None
    suffix = ""
    if isinstance(advisories, list) and advisories:
        suffix = "; advisories " + ", ".join(str(a) for a in advisories)
    return status, suffix


def _debug(doc: Mapping[str, Any]) -> object:
    claims = doc.get("claims")
    return claims.get("debug") if isinstance(claims, Mapping) else None


def default_attestation_policy(
    doc: Mapping[str, Any], *, policy_id: str = DEFAULT_ATTESTATION_POLICY_ID
) -> Decision:
    """Appraise verified evidence without a user policy: deny debug and reserved TD attribute bits,
    record everything else."""
    reasons: list[str] = []
    notes: list[str] = []
    reasons.extend(_unknown_tee(doc))
    debug = _debug(doc)
    if debug is not False:
        reasons.append(f"debug {_what(doc)} (or its debug flag is missing)")
    reasons.extend(_section_findings(doc))
    status, suffix = _tcb(doc)
    if not isinstance(status, str):
        reasons.append("the TCB status is missing from the input document")
    elif status != "UpToDate":
        notes.append(f"TCB status {status}{suffix}")
    sim = doc.get("sim")
    if sim is True:
        notes.append(f"simulated evidence (it chains to the dev PKI, not to {_vendor(doc)})")
    elif sim is not False:
        reasons.append("the input document does not say whether the evidence is simulated")
    return decide(
        doc, allowed=not reasons, reasons=reasons, notes=notes, policy_id=policy_id, executables="unchecked"
    )


def default_resource_policy(
    doc: Mapping[str, Any],
    *,
    ear_status: str | None = None,
    policy_id: str = DEFAULT_RESOURCE_POLICY_ID,
) -> Decision:
    """Allow only an affirming appraisal of non-simulated evidence.

    ``doc`` is the appraisal input (for a token: ``EarClaims.appraisal_input``); ``ear_status``,
    when given, is the status the token carries and must also be ``affirming``.
    """
    reasons: list[str] = []
    reasons.extend(_unknown_tee(doc))
    status, suffix = _tcb(doc)
    if status != "UpToDate":
        reasons.append(f"TCB status {status} is not UpToDate{suffix}")
    if _debug(doc) is not False:
        reasons.append(f"debug {_what(doc)} (or its debug flag is missing)")
    reasons.extend(_section_findings(doc))
    if doc.get("sim") is not False:
        reasons.append(f"the evidence is simulated (it chains to the dev PKI, not to {_vendor(doc)})")
    if ear_status is not None and ear_status != "affirming":
        reasons.append(f"ear.status is {ear_status}, not affirming")
    return decide(doc, allowed=not reasons, reasons=reasons, policy_id=policy_id, executables="unchecked")
