"""Claims of a verified SEV-SNP report: what was measured and how the guest and host were set up.

Claims describe; they do not judge. A debug guest, a migration agent, VMPL 1, SMT, provisional
firmware (committed != current) or an ID block are valid claims that policy
(``keybroker.appraisal``) may reject. Byte strings are lowercase hex, integers stay integers, and
every key is present in every report version (``None`` where a version lacks the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from keybroker.tee.snp.abi import AttestationReport, Product, ReportTcbs, SigningKey

__all__ = ["SnpClaims", "claims_from_report"]


@dataclass(frozen=True, slots=True)
class SnpClaims:
    """The claims of one verified report (built by :func:`claims_from_report`)."""

    report: AttestationReport
    product: Product
    signing_key: SigningKey
    tcbs: ReportTcbs
    #: VLEK only: the cloud provider the VLEK was issued to (its certificate's cspID).
    csp_id: str | None
    tee: Literal["snp"] = "snp"

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def debug(self) -> bool:
        return self.report.policy.debug

    @property
    def provisional_firmware(self) -> bool:
        """The running firmware (CURRENT) is not the committed one: it could still be rolled back."""
        r = self.report
        return r.current_version != r.committed_version or r.current_tcb != r.committed_tcb

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        t = self.tcbs

        def mit(value: int | None) -> str | None:
            return None if value is None else f"{value:016x}"

        return {
            "tee": self.tee,
            "report_version": r.version,
            "product": self.product,
            "signing_key": self.signing_key,
            "csp_id": self.csp_id,
            "measurement": r.measurement.hex(),
            "host_data": r.host_data.hex(),
            "report_data": r.report_data.hex(),
            "id_key_digest": r.id_key_digest.hex(),
            "author_key_digest": r.author_key_digest.hex(),
            "author_key_en": r.key_info.author_key_en,
            "family_id": r.family_id.hex(),
            "image_id": r.image_id.hex(),
            "guest_svn": r.guest_svn,
            "vmpl": r.vmpl,
            "debug": r.policy.debug,
            "policy": r.policy.to_dict(),
            "platform_info": r.platform_info.to_dict(),
            "report_id": r.report_id.hex(),
            "report_id_ma": r.report_id_ma.hex(),
            "chip_id": r.chip_id.hex(),
            "cpuid": None if r.cpuid is None else r.cpuid.to_dict(),
            "tcb": {
                "reported": t.reported.to_dict(r.reported_tcb),
                "committed": t.committed.to_dict(r.committed_tcb),
                "launch": t.launch.to_dict(r.launch_tcb),
                "current": t.current.to_dict(r.current_tcb),
            },
            "firmware": {
                "current": r.current_version.to_dict(),
                "committed": r.committed_version.to_dict(),
            },
            "provisional_firmware": self.provisional_firmware,
            "launch_mit_vector": mit(r.launch_mit_vector),
            "current_mit_vector": mit(r.current_mit_vector),
        }


def claims_from_report(
    verified_report: AttestationReport,
    *,
    product: Product,
    signing_key: SigningKey,
    tcbs: ReportTcbs,
    csp_id: str | None,
) -> SnpClaims:
    """Claims of a report that ``verify.verify_report`` has checked (call on nothing else)."""
    return SnpClaims(
        report=verified_report, product=product, signing_key=signing_key, tcbs=tcbs, csp_id=csp_id
    )
