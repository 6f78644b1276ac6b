"""The ``az-snp-vtpm`` and ``az-tdx-vtpm`` sections: an Azure confidential VM's hardware section
(``snp`` or ``tdx``) combined with a ``tpm`` section for its vTPM's PCRs.

``az-tdx-vtpm``: ``{"tdx": <the tdx section>, "tpm": <PCRs, event log, clock>}``; the TDX clauses are
the ``tdx`` section's own (MRSEAM, MRTD, RTMRs, reserved TD attribute bits, ...), evaluated on the
TD quote's claims. ``az-snp-vtpm``: ``{"snp": {"attributes": {measurement, host_data, ...}}, "tpm":
{...}}``. ``client_permissions`` and ``enforce_tcb_upto_date`` are the hardware section's.

The hardware report vouches for the vTPM's AK (HCLAkPub), so the ``tpm`` part has no AK clauses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, StrictBool

from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.fields import Permission, Sha256Hex, Sha384Hex, Strict
from keybroker.appraisal.section import PolicySection, SectionAttributes
from keybroker.appraisal.sections import tdx
from keybroker.appraisal.sections.tpm import TpmChecks, clock_regression, evaluate_checks

__all__ = [
    "AZ_SNP_VTPM",
    "AZ_TDX_VTPM",
    "AzSnpAttributes",
    "AzSnpSection",
    "AzSnpVtpmSection",
    "AzTdxVtpmSection",
]


class MinimumTcb(Strict):
    """Minimum SVNs of the REPORTED_TCB components (>=). None: not checked."""

    bootloader: int | None = Field(default=None, ge=0, le=255)
    tee: int | None = Field(default=None, ge=0, le=255)
    snp: int | None = Field(default=None, ge=0, le=255)
    microcode: int | None = Field(default=None, ge=0, le=255)


class AzSnpAttributes(Strict):
    #: The paravisor's launch measurement. Empty: any.
    measurement: list[Sha384Hex] = Field(default_factory=list, max_length=256)
    host_data: list[Sha256Hex] = Field(default_factory=list, max_length=256)
    id_key_digest: list[Sha384Hex] = Field(default_factory=list, max_length=256)
    #: Minimum GUEST_SVN (>=). None: not checked.
    guest_svn: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    minimum_tcb: MinimumTcb | None = None
    client_permissions: list[Permission] = Field(default_factory=list)
    #: AMD publishes no TCB status (NotEvaluated): true denies every SEV-SNP report.
    enforce_tcb_upto_date: StrictBool = False


class AzSnpSection(Strict):
    attributes: AzSnpAttributes


class AzSnpVtpmSection(Strict):
    snp: AzSnpSection
    tpm: TpmChecks = Field(default_factory=TpmChecks)

    @property
    def attributes(self) -> SectionAttributes:
        return self.snp.attributes


class AzTdxVtpmSection(Strict):
    tdx: tdx.TdxSection
    tpm: TpmChecks = Field(default_factory=TpmChecks)

    @property
    def attributes(self) -> SectionAttributes:
        return self.tdx.attributes


def _part(c: Clauses, doc: Mapping[str, Any], claims: object) -> Clauses:
    """Clauses on a part of the claims, reporting into ``c``."""
    sub = Clauses(doc, claims if isinstance(claims, Mapping) else {})
    sub.reasons, sub.notes = c.reasons, c.notes
    return sub


def _snp(c: Clauses, a: AzSnpAttributes) -> None:
    claims = c.claims.get("snp")
    sub = _part(c, c.doc, claims)
    sub.hex_any_of("snp.measurement", "measurement", a.measurement)
    sub.hex_any_of("snp.host_data", "host_data", a.host_data)
    sub.hex_any_of("snp.id_key_digest", "id_key_digest", a.id_key_digest)
    sub.minimum("snp.guest_svn", "guest_svn", a.guest_svn)
    if a.minimum_tcb is not None:
        tcbs = sub.claims.get("tcb")
        tcb = _part(c, c.doc, tcbs.get("reported") if isinstance(tcbs, Mapping) else None)
        for component in ("bootloader", "tee", "snp", "microcode"):
            tcb.minimum(f"snp.tcb.{component}", component, getattr(a.minimum_tcb, component))
        c.measurement_failed |= tcb.measurement_failed
    c.measurement_failed |= sub.measurement_failed


def _tpm(c: Clauses, checks: TpmChecks) -> None:
    claims = c.claims.get("tpm")
    sub = _part(c, c.doc, claims)
    evaluate_checks(sub, sub.claims, checks, prefix="tpm.")
    c.measurement_failed |= sub.measurement_failed


def _evaluate_snp(c: Clauses, section: AzSnpVtpmSection) -> None:
    _snp(c, section.snp.attributes)
    _tpm(c, section.tpm)


def _tdx_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The TD's own input document (its quote's claims), for the ``tdx`` section's clauses."""
    claims = doc.get("claims")
    td = claims.get("tdx") if isinstance(claims, Mapping) else None
    return {"tee": "tdx", "claims": td if isinstance(td, Mapping) else {}}


def _evaluate_tdx(c: Clauses, section: AzTdxVtpmSection) -> None:
    doc = _tdx_doc(c.doc)
    sub = _part(c, doc, doc["claims"])
    tdx.SECTION.evaluate(sub, section.tdx)
    c.measurement_failed |= sub.measurement_failed
    _tpm(c, section.tpm)


def _vtpm_findings(doc: Mapping[str, Any]) -> list[str]:
    claims = doc.get("claims")
    tpm = claims.get("tpm") if isinstance(claims, Mapping) else None
    text = clock_regression(tpm) if isinstance(tpm, Mapping) else "the vTPM's claims are missing"
    return [] if text is None else [text]


def _snp_findings(doc: Mapping[str, Any]) -> list[str]:
    return _vtpm_findings(doc) if doc.get("tee") == "az-snp-vtpm" else []


def _tdx_findings(doc: Mapping[str, Any]) -> list[str]:
    if doc.get("tee") != "az-tdx-vtpm":
        return []
    return [*tdx.SECTION.default_findings(_tdx_doc(doc)), *_vtpm_findings(doc)]


AZ_SNP_VTPM = PolicySection(
    tee="az-snp-vtpm",
    model=AzSnpVtpmSection,
    subject="confidential VM",
    debug_flag="SEV-SNP POLICY.DEBUG",
    vendor="AMD",
    evaluate=_evaluate_snp,
    default_findings=_snp_findings,
)

AZ_TDX_VTPM = PolicySection(
    tee="az-tdx-vtpm",
    model=AzTdxVtpmSection,
    subject="confidential VM",
    debug_flag="TD_ATTRIBUTES.DEBUG",
    vendor="Intel",
    evaluate=_evaluate_tdx,
    default_findings=_tdx_findings,
)
