"""Evaluate an Intel SecL KBS v5 key-transfer policy (:class:`TransferPolicyBody`) on verified claims.

Every clause is checked and every failure reported (no early exit), each with the expected and the
actual value. The clauses every TEE shares are here (attestation type, simulated evidence, debug,
client permissions, TCB status); each TEE's own come from its policy section
(``appraisal.sections``, found through ``appraisal.registry``). Differences from SecL, on purpose
(``docs/policies.md`` lists them): ``isvsvn``/``seamsvn`` are minimums (>=), not equality;
MRENCLAVE is checked when listed; debug enclaves/TDs, simulated evidence and TDs with reserved TD
attribute bits set are denied unless the policy allows them; ``client_permissions`` are checked on
every path, and a policy that lists any denies a request without a token. ``policy_ids`` (Trust
Authority appraisal policies) cannot be evaluated here and deny.

Hex values are compared as bytes, so case never matters.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.decision import Decision, Executables, Reason, decide
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.tee.verifier import VerifiedEvidence

__all__ = ["evaluate", "evaluate_input"]


def evaluate_input(policy: TransferPolicyBody, doc: Mapping[str, Any], *, policy_id: str) -> Decision:
    """Evaluate ``policy`` on an appraisal input document (see :mod:`keybroker.appraisal.input`)."""

    def deny(reason: str | Reason) -> Decision:
        return decide(doc, allowed=False, reasons=[reason], policy_id=policy_id, executables="unchecked")

    tee = doc.get("tee")
    claims = doc.get("claims")
    registered = policy.registry.get(tee)
    if registered is None or not isinstance(claims, Mapping) or claims.get("tee") != tee:
        return deny(
            f"the evidence TEE {tee!r} is not {policy.registry.listing()}, or its claims do not match it"
        )
    attestation_type = registered.attestation_type
    if attestation_type not in policy.attestation_type:
        listed = ", ".join(policy.attestation_type)
        return deny(
            Reason(
                check="attestation_type",
                text=f"the evidence is {attestation_type} but the policy's attestation_type is [{listed}]",
                public=f"the evidence is {attestation_type}, which the policy's attestation_type does not list",
                presented=attestation_type,
                expected=listed,
            )
        )
    section = policy.section(registered.name)
    if section is None:  # the policy model forbids this; deny rather than trust it
        return deny(f"the policy lists {attestation_type} but has no {registered.name} section")
    kind = registered.section

    c = Clauses(doc, claims)
    sim = doc.get("sim")
    if sim is not False:
        if sim is True and policy.allow_simulated:
            c.notes.append("simulated evidence allowed (allow_simulated is true)")
        else:
            c.reasons.append(
                Reason.plain(
                    f"the evidence is simulated (it chains to the dev PKI, not to {kind.vendor}) "
                    "and the policy does not set allow_simulated",
                    "sim",
                )
            )
    debug = claims.get("debug")
    if debug is not False:
        if debug is True and policy.allow_debug:
            c.notes.append(f"debug {kind.subject} allowed (allow_debug is true)")
        else:
            c.reasons.append(
                Reason.plain(
                    f"debug {kind.subject} ({kind.debug_flag} is set) and the policy does not set allow_debug",
                    "debug",
                )
            )
    kind.evaluate(c, section)
    attributes = kind.attributes(section)
    c.client_permissions(attributes.client_permissions, doc.get("client_permissions"))
    tcb = doc.get("tcb")
    status = tcb.get("status") if isinstance(tcb, Mapping) else None
    if kind.no_tcb_status_note is None or not isinstance(status, str):
        c.tcb(tcb, enforce=attributes.enforce_tcb_upto_date)
    else:
        c.notes.append(f"TCB status {status}: {kind.no_tcb_status_note}")

    executables: Executables = "unrecognized" if c.measurement_failed else "approved"
    return decide(
        doc,
        allowed=not c.reasons,
        reasons=c.reasons,
        notes=c.notes,
        policy_id=policy_id,
        executables=executables,
    )


def evaluate(
    policy: TransferPolicyBody,
    verified: VerifiedEvidence,
    *,
    client_permissions: Collection[str] | None,
    policy_id: str,
) -> Decision:
    """Evaluate ``policy`` on verified evidence. ``client_permissions`` None: no token presented."""
    return evaluate_input(
        policy, appraisal_input(verified, client_permissions=client_permissions), policy_id=policy_id
    )
