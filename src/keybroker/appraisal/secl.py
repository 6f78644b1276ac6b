"""Evaluate an Intel SecL KBS v5 key-transfer policy (:class:`TransferPolicyBody`) on verified claims.

Every clause is checked and every failure reported (no early exit), each with the expected and the
actual value. Differences from SecL, on purpose (``docs/policies.md`` lists them):
``isvsvn``/``seamsvn`` are minimums (>=), not equality; MRENCLAVE is checked when listed; debug
enclaves/TDs, simulated evidence and TDs with reserved TD attribute bits set are denied unless
the policy allows them; ``client_permissions``
are checked on every path, and a policy that lists any denies a request without a token.
``policy_ids`` (Trust Authority appraisal policies) cannot be evaluated here and deny.

Hex values are compared as bytes, so case never matters.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from keybroker.appraisal.decision import Decision, Executables, Reason, decide
from keybroker.appraisal.defaults import reserved_td_attributes
from keybroker.appraisal.input import AppraisalInput, appraisal_input
from keybroker.appraisal.policy import SgxAttributes, TdxAttributes, TransferPolicyBody
from keybroker.tee.dcap.verify import VerifiedQuote

__all__ = ["evaluate", "evaluate_input"]

#: How many expected values a reason lists before it abbreviates.
_LIST_LIMIT: Final = 4


def _listing(values: Sequence[str]) -> str:
    n = len(values)
    shown = ", ".join(values[:_LIST_LIMIT])
    more = f", and {n - _LIST_LIMIT} more" if n > _LIST_LIMIT else ""
    return f"{n} value{'s' if n != 1 else ''}: {shown}{more}"


class _Clauses:
    """Collects failed clauses (reasons) and non-fatal facts (notes) for one evaluation.

    Each reason is a :class:`Reason`: its full text names the policy's expected values, its
    public text only the clause and the presented value."""

    def __init__(self, claims: Mapping[str, Any]) -> None:
        self.claims = claims
        self.reasons: list[Reason] = []
        self.notes: list[str] = []
        self.measurement_failed = False

    def _mismatch(self, name: str, presented: str, public: str, expected: str, text: str) -> None:
        self.reasons.append(
            Reason(check=name, text=text, public=public, presented=presented, expected=expected)
        )
        self.measurement_failed = True

    def _hex(self, key: str, name: str) -> bytes | None:
        value = self.claims.get(key)
        try:
            if not isinstance(value, str):
                raise ValueError
            return bytes.fromhex(value)
        except ValueError:
            self.reasons.append(Reason.plain(f"{name}: claim {key} is missing or not hex", check=name))
            self.measurement_failed = True
            return None

    def _int(self, key: str, name: str) -> int | None:
        value = self.claims.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.reasons.append(Reason.plain(f"{name}: claim {key} is missing or not an integer", check=name))
            self.measurement_failed = True
            return None
        return value

    def hex_any_of(self, name: str, key: str, allowed: Sequence[str]) -> None:
        """The claim must equal one of ``allowed``; an empty list is not checked."""
        if not allowed:
            return
        actual = self._hex(key, name)
        if actual is None:
            return
        if actual not in {bytes.fromhex(v) for v in allowed}:
            said = f"{name} {actual.hex()} is not in the policy's list"
            expected = _listing([v.lower() for v in allowed])
            self._mismatch(name, actual.hex(), said, expected, f"{said} ({expected})")

    def hex_exact(self, name: str, key: str, expected: str | None) -> None:
        if expected is None:
            return
        actual = self._hex(key, name)
        if actual is not None and actual != bytes.fromhex(expected):
            said = f"{name} {actual.hex()} differs from the policy's"
            self._mismatch(
                name, actual.hex(), f"{said} value", expected.lower(), f"{said} {expected.lower()}"
            )

    def int_any_of(self, name: str, key: str, allowed: Sequence[int]) -> None:
        if not allowed:
            return
        actual = self._int(key, name)
        if actual is not None and actual not in allowed:
            said = f"{name} {actual} is not in the policy's list"
            expected = _listing([str(v) for v in allowed])
            self._mismatch(name, str(actual), said, expected, f"{said} ({expected})")

    def minimum(self, name: str, key: str, minimum: int | None) -> None:
        if minimum is None:
            return
        actual = self._int(key, name)
        if actual is not None and actual < minimum:
            said = f"{name} {actual} is below the policy minimum"
            self._mismatch(name, str(actual), said, str(minimum), f"{said} {minimum}")

    def client_permissions(self, required: Sequence[str], presented: object) -> None:
        if not required:
            return
        check = "client_permissions"
        if presented is None:
            self.reasons.append(
                Reason(
                    check=check,
                    text=f"the policy requires client permissions [{', '.join(required)}] "
                    "but the request presented no token",
                    public="the policy requires client permissions but the request presented no token",
                    expected=", ".join(required),
                )
            )
            return
        if not isinstance(presented, list) or not all(isinstance(p, str) for p in presented):
            self.reasons.append(Reason.plain("client_permissions in the input document are malformed", check))
            return
        held = set(presented)
        shown = ", ".join(sorted(held))
        for permission in required:
            if permission not in held:
                self.reasons.append(
                    Reason(
                        check=check,
                        text=f"client permission {permission} is not in the caller's token",
                        public=f"the caller's token (client permissions [{shown}]) lacks one the policy requires",
                        presented=shown,
                        expected=permission,
                    )
                )

    def tcb(self, tcb: object, *, enforce: bool) -> None:
        status = tcb.get("status") if isinstance(tcb, Mapping) else None
        advisories = tcb.get("advisory_ids") if isinstance(tcb, Mapping) else None
        if not isinstance(status, str):
            self.reasons.append(Reason.plain("the TCB status is missing from the input document", "tcb"))
            return
        if status == "UpToDate":
            return
        suffix = ""
        if isinstance(advisories, list) and advisories:
            suffix = "; advisories " + ", ".join(str(a) for a in advisories)
        if enforce:
            self.reasons.append(
                Reason.plain(
                    f"TCB status {status} is not UpToDate (enforce_tcb_upto_date is true){suffix}", "tcb"
                )
            )
        else:
            self.notes.append(f"TCB status {status} allowed (enforce_tcb_upto_date is false){suffix}")


def _sgx(c: _Clauses, a: SgxAttributes) -> None:
    c.hex_any_of("mrsigner", "mr_signer", a.mrsigner)
    c.int_any_of("isvprodid", "isv_prod_id", a.isvprodid)
    c.hex_any_of("mrenclave", "mr_enclave", a.mrenclave)
    c.minimum("isvsvn", "isv_svn", a.isvsvn)


def _tdx(c: _Clauses, a: TdxAttributes) -> None:
    c.hex_any_of("mrsignerseam", "mr_signer_seam", a.mrsignerseam)
    c.hex_any_of("mrseam", "mr_seam", a.mrseam)
    c.minimum("seamsvn", "seam_svn", a.seamsvn)
    c.hex_any_of("mrtd", "mr_td", a.mrtd)
    for i, expected in enumerate((a.rtmr0, a.rtmr1, a.rtmr2, a.rtmr3)):
        c.hex_exact(f"rtmr{i}", f"rtmr{i}", expected)


def evaluate_input(policy: TransferPolicyBody, doc: Mapping[str, Any], *, policy_id: str) -> Decision:
    """Evaluate ``policy`` on an appraisal input document (see :mod:`keybroker.appraisal.input`)."""

    def deny(reason: str | Reason) -> Decision:
        return decide(doc, allowed=False, reasons=[reason], policy_id=policy_id, executables="unchecked")

    tee = doc.get("tee")
    claims = doc.get("claims")
    if tee not in ("sgx", "tdx") or not isinstance(claims, Mapping) or claims.get("tee") != tee:
        return deny(f"the evidence TEE {tee!r} is not SGX or TDX, or its claims do not match it")
    attestation_type = str(tee).upper()
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
    section = policy.sgx if tee == "sgx" else policy.tdx
    if section is None:  # the policy model forbids this; deny rather than trust it
        return deny(f"the policy lists {attestation_type} but has no {tee} section")

    c = _Clauses(claims)
    what = "enclave" if tee == "sgx" else "TD"
    sim = doc.get("sim")
    if sim is not False:
        if sim is True and policy.allow_simulated:
            c.notes.append("simulated evidence allowed (allow_simulated is true)")
        else:
            c.reasons.append(
                Reason.plain(
                    "the evidence is simulated (it chains to the dev PKI, not to Intel) "
                    "and the policy does not set allow_simulated",
                    "sim",
                )
            )
    debug = claims.get("debug")
    if debug is not False:
        flag = "ATTRIBUTES.DEBUG" if tee == "sgx" else "TD_ATTRIBUTES.DEBUG"
        if debug is True and policy.allow_debug:
            c.notes.append(f"debug {what} allowed (allow_debug is true)")
        else:
            c.reasons.append(
                Reason.plain(f"debug {what} ({flag} is set) and the policy does not set allow_debug", "debug")
            )
    reserved = reserved_td_attributes(doc)
    if reserved is not None:
        reason, may_allow = reserved
        attrs = section.attributes
        if may_allow and isinstance(attrs, TdxAttributes) and attrs.allow_reserved_td_attributes:
            c.notes.append(f"{reason}: allowed (tdx.attributes.allow_reserved_td_attributes is true)")
        else:
            c.reasons.append(
                Reason.plain(
                    f"{reason} and the policy does not set tdx.attributes.allow_reserved_td_attributes",
                    "reserved_td_attributes",
                )
            )
    if section.policy_ids:
        said = "name Trust Authority appraisal policies, which keybroker does not evaluate"
        ids = ", ".join(section.policy_ids)
        c.reasons.append(
            Reason(
                check="policy_ids",
                text=f"the policy's {tee}.policy_ids [{ids}] {said}",
                public=f"the policy's {tee}.policy_ids {said}",
                expected=ids,
            )
        )
    attributes = section.attributes
    if isinstance(attributes, SgxAttributes):
        _sgx(c, attributes)
    else:
        _tdx(c, attributes)
    c.client_permissions(attributes.client_permissions, doc.get("client_permissions"))
    c.tcb(doc.get("tcb"), enforce=attributes.enforce_tcb_upto_date)

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
    verified: VerifiedQuote,
    *,
    client_permissions: Collection[str] | None,
    policy_id: str,
) -> Decision:
    """Evaluate ``policy`` on a verified quote. ``client_permissions`` None: no token presented."""
    doc: AppraisalInput = appraisal_input(verified, client_permissions=client_permissions)
    return evaluate_input(policy, doc, policy_id=policy_id)
