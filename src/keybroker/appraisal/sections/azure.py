"""The ``az-snp-vtpm`` and ``az-tdx-vtpm`` sections: an Azure confidential VM's hardware section
(``snp`` or ``tdx``) combined with a ``tpm`` section for its vTPM's PCRs.

``az-snp-vtpm``: ``{"snp": <the snp section>, "tpm": <PCRs, event log, clock>}``; ``az-tdx-vtpm``:
``{"tdx": <the tdx section>, "tpm": {...}}``. The hardware part is the SEV-SNP or TDX section itself
(its model, its clauses, its defaults: e.g. MIGRATE_MA forbidden, VMPL 0, reserved TD attribute
bits denied), evaluated on the hardware claims exactly as for that TEE alone, so that one decision
about a SEV-SNP report or a TD quote lives in one place. ``client_permissions`` (and, for TDX,
``enforce_tcb_upto_date``) are the hardware section's. The hardware's reasons carry the hardware
section's own clause names (``measurement``, ``mrtd``); the vTPM's are ``tpm.``-prefixed.

The hardware report vouches for the vTPM's AK (HCLAkPub), so the ``tpm`` part has no AK clauses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.fields import Strict
from keybroker.appraisal.section import PolicySection, SectionAttributes
from keybroker.appraisal.sections import snp, tdx
from keybroker.appraisal.sections.tpm import TpmChecks, clock_regression, evaluate_checks

__all__ = ["AZ_SNP_VTPM", "AZ_TDX_VTPM", "AzSnpVtpmSection", "AzTdxVtpmSection"]


class AzSnpVtpmSection(Strict):
    snp: snp.SnpSection
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


def _tpm(c: Clauses, checks: TpmChecks) -> None:
    claims = c.claims.get("tpm")
    sub = _part(c, c.doc, claims)
    evaluate_checks(sub, sub.claims, checks, prefix="tpm.")
    c.measurement_failed |= sub.measurement_failed


def _hardware_doc(doc: Mapping[str, Any], tee: str) -> dict[str, Any]:
    """The hardware's own input document (its report's or quote's claims), for its section's clauses."""
    claims = doc.get("claims")
    hw = claims.get(tee) if isinstance(claims, Mapping) else None
    return {"tee": tee, "claims": hw if isinstance(hw, Mapping) else {}}


def _hardware(c: Clauses, section: PolicySection[Any], attributes: Any) -> None:
    doc = _hardware_doc(c.doc, section.tee)
    sub = _part(c, doc, doc["claims"])
    section.evaluate(sub, attributes)
    c.measurement_failed |= sub.measurement_failed


def _evaluate_snp(c: Clauses, section: AzSnpVtpmSection) -> None:
    _hardware(c, snp.SECTION, section.snp)
    _tpm(c, section.tpm)


def _evaluate_tdx(c: Clauses, section: AzTdxVtpmSection) -> None:
    _hardware(c, tdx.SECTION, section.tdx)
    _tpm(c, section.tpm)


def _vtpm_findings(doc: Mapping[str, Any]) -> list[str]:
    claims = doc.get("claims")
    tpm = claims.get("tpm") if isinstance(claims, Mapping) else None
    text = clock_regression(tpm) if isinstance(tpm, Mapping) else "the vTPM's claims are missing"
    return [] if text is None else [text]


def _snp_findings(doc: Mapping[str, Any]) -> list[str]:
    if doc.get("tee") != "az-snp-vtpm":
        return []
    return [*snp.SECTION.default_findings(_hardware_doc(doc, "snp")), *_vtpm_findings(doc)]


def _tdx_findings(doc: Mapping[str, Any]) -> list[str]:
    if doc.get("tee") != "az-tdx-vtpm":
        return []
    return [*tdx.SECTION.default_findings(_hardware_doc(doc, "tdx")), *_vtpm_findings(doc)]


AZ_SNP_VTPM = PolicySection(
    tee="az-snp-vtpm",
    model=AzSnpVtpmSection,
    subject="confidential VM",
    debug_flag="SEV-SNP POLICY.DEBUG",
    vendor="AMD",
    evaluate=_evaluate_snp,
    default_findings=_snp_findings,
    no_tcb_status_note=snp.SECTION.no_tcb_status_note,
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
