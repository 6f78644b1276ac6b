"""Verify Azure confidential VM vTPM evidence: hardware report -> HCL runtime data -> HCLAkPub -> quote.

The chain of trust (Trustee ``az_snp_vtpm``/``az_tdx_vtpm`` ``evaluate``, checked here in this order;
each failure a ``VerificationError(check=...)``):

1. ``hcl_report``: the HCL report parses (``hcl.parse_hcl_report``) and is of the evidence's TEE.
2. ``hardware``: the hardware evidence verifies: the SEV-SNP report in the HCL slot with its VCEK, or
   the TD quote. That verification is injected (:data:`HardwareVerifier`): it belongs to the SNP and
   DCAP packages, with their own roots, collateral and time; it returns the verified REPORT_DATA.
   Its own failures propagate with their own check names.
3. ``report_data``: the verified REPORT_DATA is H(runtime data) zero padded to 64 bytes, all 64 bytes
   compared (the runtime data holds HCLAkPub: the AK is now the hardware's).
4. ``td_report`` (TDX): the TDREPORT in the HCL slot carries that same REPORTDATA and the TD quote
   body's measurements (MRTD, RTMRs, attributes, TEE TCB): the TD quote was made from it, and a
   report from another TD cannot ride along.
5. The vTPM quote, ``tee.tpm.verify.verify_quote`` with HCLAkPub (a bare RSASSA-PKCS1-v1_5 SHA-256
   signature): ``signature``, ``extra_data`` (the nonce), ``pcr_selection`` (all 24 SHA-256 PCRs
   reported, exactly the quote's selection), ``pcr_digest``.
6. ``user_data`` (evidence version 2): the runtime data's ``user-data`` (64 bytes, hex) starts with
   the quote's extraData (the nonce, once ``extra_data`` compared it): the HCL report itself was
   made for this challenge.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.azure.evidence import AzureEvidence
from keybroker.tee.azure.hcl import TDREPORT_FIELDS, HclReport, expected_report_data, parse_hcl_report
from keybroker.tee.dcap.abi import TdReportBody
from keybroker.tee.dcap.abi import parse_quote as parse_td_quote
from keybroker.tee.tpm.abi import ClockInfo, TpmSignature
from keybroker.tee.tpm.claims import tpm_claims
from keybroker.tee.tpm.verify import ExpectedExtraData, VerifiedQuote, verify_quote

__all__ = [
    "CHECKS",
    "HardwareEvidence",
    "HardwareVerifier",
    "VerifiedAzureVtpm",
    "VerifiedHardware",
    "verify_azure_vtpm",
]

CHECKS: Final = (
    "hcl_report",
    "hardware",
    "report_data",
    "td_report",
    "signature",
    "extra_data",
    "pcr_selection",
    "pcr_digest",
    "user_data",
)


@dataclass(frozen=True, slots=True)
class HardwareEvidence:
    """What the hardware verifier checks: the SNP report (the HCL slot) and the VCEK the attester
    sent, or the TD quote."""

    tee: Literal["snp", "tdx"]
    report: bytes
    vcek: bytes | None


@dataclass(frozen=True, slots=True)
class VerifiedHardware:
    """A verified hardware report: its 64-byte REPORT_DATA and its claims (measurement, TCB, ...)."""

    report_data: bytes
    claims: Mapping[str, Any] = field(default_factory=dict)


#: Verifies the hardware evidence (signature, chain to pinned roots, TCB, at a time of its own) or
#: raises ``VerificationError``/``EvidenceParseError``.
HardwareVerifier = Callable[[HardwareEvidence], VerifiedHardware]


@dataclass(frozen=True, slots=True)
class VerifiedAzureVtpm:
    tee: Literal["snp", "tdx"]
    hcl: HclReport
    hardware: VerifiedHardware
    quote: VerifiedQuote
    checks: tuple[str, ...]

    def claims(self) -> dict[str, Any]:
        ek = self.hcl.ek_public
        return {
            "tee": f"azure-{self.tee}-vtpm",
            "hardware": dict(self.hardware.claims),
            "hcl": {
                "version": self.hcl.version,
                "vm_configuration": self.hcl.vm_configuration,
                "user_data": self.hcl.user_data,
                "ak_spki_sha256": _spki_sha256(self.hcl.ak_public),
                "ek_spki_sha256": _spki_sha256(ek) if ek is not None else None,
                "runtime_data_sha256": hashlib.sha256(self.hcl.runtime_data).hexdigest(),
            },
            "tpm": tpm_claims(self.quote),
        }


def _spki_sha256(key: Any) -> str:
    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _check_td_report(hcl: HclReport, td_quote: bytes, report_data: bytes) -> None:
    """The TDREPORT in the HCL slot is the one the (verified) TD quote was made from: REPORTDATA and
    every TEE_TCB_INFO / TDINFO field the quote body repeats are equal. The TDREPORT's MAC is not
    remotely verifiable, so nothing else is read from it."""
    body = parse_td_quote(td_quote).body
    if not isinstance(body, TdReportBody):
        raise VerificationError("the TD quote holds an SGX report body", check="td_report")
    tdreport = hcl.tdreport
    if not hmac.compare_digest(hcl.hw_report_data, report_data):
        raise VerificationError(
            "the TDREPORT in the HCL report carries other REPORTDATA than the verified TD quote",
            check="td_report",
        )
    quoted = {
        "tee_tcb_svn": body.tee_tcb_svn,
        "mr_seam": body.mr_seam,
        "mr_signer_seam": body.mr_signer_seam,
        "seam_attributes": body.seam_attributes,
        "td_attributes": body.td_attributes,
        "xfam": body.xfam,
        "mr_td": body.mr_td,
        "mr_config_id": body.mr_config_id,
        "mr_owner": body.mr_owner,
        "mr_owner_config": body.mr_owner_config,
        **{f"rtmr{i}": body.rtmr[i] for i in range(4)},
    }
    for name, start, end in TDREPORT_FIELDS:
        if not hmac.compare_digest(tdreport[start:end], quoted[name]):
            raise VerificationError(
                f"the TDREPORT in the HCL report has another {name.upper()} than the verified TD quote",
                check="td_report",
            )


def verify_azure_vtpm(
    evidence: AzureEvidence,
    *,
    expected_nonce: ExpectedExtraData,
    verify_hardware: HardwareVerifier,
    previous_clock: ClockInfo | None = None,
) -> VerifiedAzureVtpm:
    """Verify Azure vTPM ``evidence`` (``evidence.parse_trustee_evidence``) for ``expected_nonce``
    (the quote's extraData; :data:`NO_NONCE` skips it explicitly), with ``verify_hardware`` checking
    the SNP report or TD quote."""
    checks: list[str] = []
    hcl = parse_hcl_report(evidence.hcl_report)
    if hcl.report_type != evidence.tee:
        raise VerificationError(
            f"the HCL report holds a {hcl.report_type.upper()} report, the evidence is {evidence.tee.upper()}",
            check="hcl_report",
        )
    checks.append("hcl_report")

    if evidence.tee == "snp":
        hardware_evidence = HardwareEvidence("snp", hcl.hw_report, evidence.vcek)
    else:
        if evidence.td_quote is None:
            raise EvidenceParseError("TDX evidence without a TD quote", field="evidence.td_quote")
        hardware_evidence = HardwareEvidence("tdx", evidence.td_quote, None)
    hardware = verify_hardware(hardware_evidence)
    if len(hardware.report_data) != 64:
        raise VerificationError(
            f"the hardware verifier returned {len(hardware.report_data)} bytes of report data, not 64",
            check="hardware",
        )
    checks.append("hardware")

    want = expected_report_data(hcl)
    if not hmac.compare_digest(hardware.report_data, want):
        raise VerificationError(
            f"the hardware report's REPORT_DATA {hardware.report_data.hex()} is not the {hcl.hash_type} of the "
            f"HCL runtime data, zero padded ({want.hex()}): HCLAkPub is not bound to this hardware report",
            check="report_data",
        )
    checks.append("report_data")

    if evidence.tee == "tdx":
        assert evidence.td_quote is not None
        _check_td_report(hcl, evidence.td_quote, hardware.report_data)
        checks.append("td_report")

    quote = verify_quote(
        evidence.quote,
        TpmSignature.raw_rsassa(evidence.signature),
        hcl.ak_public,
        pcrs={"sha256": dict(enumerate(evidence.pcrs))},
        expected_extra_data=expected_nonce,
        previous_clock=previous_clock,
    )
    checks.extend(c for c in quote.checks if c not in ("parse", "ak_public"))

    if evidence.version >= 2:
        extra = quote.extra_data
        user_data = hcl.user_data
        try:
            decoded = bytes.fromhex(user_data) if user_data is not None else b""
        except ValueError:
            decoded = b""
        if len(decoded) != 64 or not extra or not hmac.compare_digest(decoded[: len(extra)], extra):
            raise VerificationError(
                "the HCL runtime data's user-data does not start with the quote's extraData (evidence "
                "version 2 binds the HCL report to the challenge)",
                check="user_data",
            )
        checks.append("user_data")

    return VerifiedAzureVtpm(tee=evidence.tee, hcl=hcl, hardware=hardware, quote=quote, checks=tuple(checks))
