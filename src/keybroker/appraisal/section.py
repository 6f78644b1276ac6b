"""A TEE's section of the transfer policy (``sgx``, ``tdx``, ...): its model and its clauses.

The transfer policy (``appraisal.policy.TransferPolicyBody``) has one optional member per
registered TEE, named after it, validated by the section's :attr:`PolicySection.model`. The SecL
evaluation (``appraisal.secl``) checks what every TEE shares (attestation type, simulated
evidence, debug, client permissions, TCB status) and calls :attr:`PolicySection.evaluate` for the
TEE's own clauses (measurements, SVNs, attribute bits) in between. The default attestation and
resource policies (``appraisal.defaults``) add :attr:`PolicySection.default_findings`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from keybroker.appraisal.clauses import Clauses

__all__ = ["PolicySection", "SectionAttributes", "SectionModel"]


class SectionAttributes(Protocol):
    """What the shared clauses read of every section's ``attributes``."""

    @property
    def client_permissions(self) -> Sequence[str]: ...

    @property
    def enforce_tcb_upto_date(self) -> bool: ...


class SectionModel(Protocol):
    @property
    def attributes(self) -> SectionAttributes: ...


SectionT = TypeVar("SectionT", bound=BaseModel)


def _no_findings(doc: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class PolicySection(Generic[SectionT]):
    """One TEE's policy section. ``model`` must have ``attributes`` with ``client_permissions`` and
    ``enforce_tcb_upto_date`` (:class:`SectionModel`)."""

    #: The TEE (the section's member name in the policy, the appraisal input's ``tee``).
    tee: str
    model: type[SectionT]
    #: How reasons name the workload: "enclave", "TD".
    subject: str
    #: The debug flag's name in reasons: "ATTRIBUTES.DEBUG".
    debug_flag: str
    #: Whose roots real evidence chains to (simulated evidence chains to a dev root instead).
    vendor: str
    #: The TEE's own clauses, evaluated after the simulated-evidence and debug clauses.
    evaluate: Callable[[Clauses, SectionT], None]
    #: What the default attestation and resource policies deny for this TEE besides debug, TCB
    #: status and simulated evidence (TDX: reserved TD attribute bits).
    default_findings: Callable[[Mapping[str, Any]], list[str]] = field(default=_no_findings)
    #: For a TEE whose vendor publishes no TCB status (SEV-SNP): the note that replaces the shared
    #: TCB status clause (``enforce_tcb_upto_date``), saying how the section judges the TCB. None:
    #: the shared clause applies.
    no_tcb_status_note: str | None = None

    @property
    def attestation_type(self) -> str:
        return self.tee.upper()

    def attributes(self, section: SectionT) -> SectionAttributes:
        return section.attributes  # type: ignore[attr-defined,no-any-return]
