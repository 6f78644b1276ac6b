"""Appraisal decisions: allowed or not, why, and the AR4SI view of the same facts.

Every policy language ends in :func:`decide`, the one place where the EAR status and the
trustworthiness vector are derived (draft-ietf-rats-ar4si, "Trustworthiness Claims"; EAR,
draft-ietf-rats-ear, ``ear.status`` / ``ear.trustworthiness-vector``). Values are AR4SI's
enumerations; tiers: none -1..1, affirming 2..31, warning 32..95, contraindicated 96..127.

========================  =====================================================================
claim                     value
========================  =====================================================================
instance-identity         2 (recognized: PCK chain to the pinned Intel root, not revoked);
                          0 for simulated evidence (the dev PKI vouches for no real instance)
configuration             32 (unsafe) for a debug enclave/TD the policy allowed, 96
                          (unsupportable) for one it did not; else 32 if the TCB status asks for
                          a platform configuration change (``*ConfigurationNeeded``); else 2
executables               2 (approved) when the policy allowed the measured identity;
                          33 (unrecognized) when a measurement clause failed; 0 when the policy
                          did not appraise measurements (default policies, a Rego denial)
hardware                  2 (genuine) for TCB UpToDate; 32 (known vulnerabilities) for any other
                          status, and for simulated evidence
runtime-opaque            2 (encrypted memory: SGX enclave / TD / SEV-SNP or TDX VM); a debug one
                          lets the host read its memory: 32 if the policy allowed debug, 96 if not;
                          0 for a plain TPM (a TPM measures, it does not hide memory)
file-system, storage-     0: not appraised from a DCAP quote
opaque, sourced-data
========================  =====================================================================

``ear.status``: ``contraindicated`` when the policy denied; otherwise the worst tier in the vector,
so an allowed decision is ``affirming`` exactly when the TCB is UpToDate, the TEE is not in debug
mode and the evidence is not simulated, and ``warning`` otherwise. An EAR never claims more
trust than its vector (EAR, "ear.status").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from keybroker.appraisal.input import evidence_facts
from keybroker.errors import PolicyDenied

__all__ = [
    "Decision",
    "EarStatus",
    "Executables",
    "Reason",
    "TrustVector",
    "decide",
    "denied",
    "texts",
    "tier",
]

EarStatus = Literal["affirming", "warning", "contraindicated"]
Tier = Literal["none", "affirming", "warning", "contraindicated"]
#: How the policy dealt with the measured identity (MRENCLAVE, MRTD, RTMRs, ...).
Executables = Literal["approved", "unrecognized", "unchecked"]

_CONFIGURATION_STATUSES: Final = frozenset(
    {"ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDateConfigurationNeeded"}
)
#: TEEs whose evidence says nothing about memory isolation (a TPM measures the boot, it hides nothing).
_NO_MEMORY_ISOLATION: Final = frozenset({"tpm"})
_TIER_ORDER: Final[dict[Tier, int]] = {"none": 0, "affirming": 1, "warning": 2, "contraindicated": 3}
_DENIED_WITHOUT_REASON: Final = "the policy did not allow the request"


def tier(value: int) -> Tier:
    """AR4SI tier of a trustworthiness claim value."""
    if -1 <= value <= 1:
        return "none"
    if 2 <= value <= 31:
        return "affirming"
    if 32 <= value <= 95:
        return "warning"
    return "contraindicated"


@dataclass(frozen=True, slots=True)
class TrustVector:
    """An AR4SI trustworthiness vector; 0 is "no claim"."""

    instance_identity: int = 0
    configuration: int = 0
    executables: int = 0
    file_system: int = 0
    hardware: int = 0
    runtime_opaque: int = 0
    storage_opaque: int = 0
    sourced_data: int = 0

    def to_dict(self) -> dict[str, int]:
        """The EAR JSON form: AR4SI claim names, all eight present."""
        return {
            "instance-identity": self.instance_identity,
            "configuration": self.configuration,
            "executables": self.executables,
            "file-system": self.file_system,
            "hardware": self.hardware,
            "runtime-opaque": self.runtime_opaque,
            "storage-opaque": self.storage_opaque,
            "sourced-data": self.sourced_data,
        }

    def worst_tier(self) -> Tier:
        tiers = [tier(v) for v in self.to_dict().values()]
        return max(tiers, key=_TIER_ORDER.__getitem__)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why one check failed, told two ways.

    ``text`` is the full explanation, with the policy's expected values: for the audit log and for
    callers entitled to the policy. ``public`` says which check failed and what the evidence or
    the request presented, and nothing of what the policy expected: for anyone else, so that a
    denial does not teach an anonymous caller the MRTD, RTMRs or client permissions to forge.
    ``check`` names the clause (``mrtd``, ``isvsvn``, ``client_permissions``, ...); ``presented``
    and ``expected`` are the compared values as text (None: not applicable, or nothing to hide).
    """

    check: str
    text: str
    public: str
    presented: str | None = None
    expected: str | None = None

    @classmethod
    def plain(cls, text: str, check: str = "policy") -> Reason:
        """A reason that reveals nothing of the policy: the same text for everyone."""
        return cls(check=check, text=text, public=text)

    def within(self, label: str) -> Reason:
        """The same reason, both forms prefixed with ``label`` (which of several policies said it)."""
        return Reason(
            check=self.check,
            text=f"{label}: {self.text}",
            public=f"{label}: {self.public}",
            presented=self.presented,
            expected=self.expected,
        )


def texts(reasons: Iterable[Reason], *, explain: bool) -> list[str]:
    """The reasons as told to one audience: full (``explain``) or public, public ones deduplicated
    (two missing permissions are one public fact)."""
    if explain:
        return [r.text for r in reasons]
    return list(dict.fromkeys(r.public for r in reasons))


def denied(detail: str, reasons: Iterable[Reason], *, explain: bool) -> PolicyDenied:
    """The denial to raise: the caller is told ``reasons`` in full only if ``explain``; the
    exception's ``explained`` (for the audit log) is always the full form."""
    found = tuple(reasons)
    return PolicyDenied(detail, reasons=texts(found, explain=explain), explained=texts(found, explain=True))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one appraisal. ``findings`` explain a denial (one per failed clause, each a
    :class:`Reason`); ``notes`` record non-fatal facts. Neither carries key material."""

    allowed: bool
    findings: tuple[Reason, ...]
    notes: tuple[str, ...]
    policy_id: str
    ear_status: EarStatus
    trust_vector: TrustVector = field(default_factory=TrustVector)

    @property
    def reasons(self) -> tuple[str, ...]:
        """The full explanations (the audit log's form)."""
        return tuple(r.text for r in self.findings)

    @property
    def public_reasons(self) -> tuple[str, ...]:
        """What an anonymous caller is told: the failed checks and the presented values only."""
        return tuple(texts(self.findings, explain=False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "policy_id": self.policy_id,
            "ear_status": self.ear_status,
            "trust_vector": self.trust_vector.to_dict(),
        }


def _vector(doc: Mapping[str, Any] | None, *, allowed: bool, executables: Executables) -> TrustVector:
    facts = evidence_facts(doc)
    if facts["tee"] is None:
        return TrustVector()
    sim, debug, status = facts["sim"], facts["debug"], facts["tcb_status"]
    # Unknown facts count against the evidence.
    simulated = sim is not False
    in_debug = debug is not False
    debug_value = 32 if allowed else 96
    if in_debug:
        configuration = debug_value
    elif status is None or status in _CONFIGURATION_STATUSES:
        configuration = 32
    else:
        configuration = 2
    return TrustVector(
        instance_identity=0 if simulated else 2,
        configuration=configuration,
        executables={"approved": 2, "unrecognized": 33, "unchecked": 0}[executables],
        hardware=2 if status == "UpToDate" and not simulated else 32,
        runtime_opaque=0 if facts["tee"] in _NO_MEMORY_ISOLATION else (debug_value if in_debug else 2),
    )


def decide(
    doc: Mapping[str, Any] | None,
    *,
    allowed: bool,
    reasons: Iterable[str | Reason],
    notes: Iterable[str] = (),
    policy_id: str,
    executables: Executables,
) -> Decision:
    """Build a :class:`Decision` and derive its EAR status and trustworthiness vector.

    Deny by default: a decision is allowed only if ``allowed`` is true, no reason was given and
    there is an input document; a denial always carries at least one reason. A string reason
    reveals nothing of the policy (:meth:`Reason.plain`).
    """
    reason_list = tuple(r if isinstance(r, Reason) else Reason.plain(r) for r in reasons)
    ok = allowed and not reason_list and doc is not None
    if not ok and not reason_list:
        reason_list = (Reason.plain(_DENIED_WITHOUT_REASON),)
    if not ok and executables == "approved":
        executables = "unchecked"
    vector = _vector(doc, allowed=ok, executables=executables)
    status: EarStatus
    if not ok:
        status = "contraindicated"
    else:
        worst = vector.worst_tier()
        status = "warning" if worst == "none" else worst
    return Decision(
        allowed=ok,
        findings=reason_list,
        notes=tuple(notes),
        policy_id=policy_id,
        ear_status=status,
        trust_vector=vector,
    )
