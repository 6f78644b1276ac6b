"""Azure confidential VMs behind the verifier interface: ``az-snp-vtpm`` and ``az-tdx-vtpm`` (the
names Confidential Containers Trustee uses), one :class:`AzureVtpmVerifier` each.

The evidence is Trustee's JSON (``evidence``). ``verify`` runs ``verify.verify_azure_vtpm`` with
the hardware verified for real: the SEV-SNP report in the HCL slot by ``tee.snp.verify`` (the VCEK
the attester sent, to AMD's pinned ARKs or a configured dev root; the report must come from VMPL 0,
the paravisor's: a report a less privileged guest asked for could bind an AK the guest made), or the
TD quote by ``tee.dcap`` (collateral from the trust's source or the caller). Then, for evidence
version 2, the HCL runtime data's ``user-data`` must start with the quote's extraData. The quote's
extraData is the report data the ``Verifier`` compares with the protocol's binding (as for ``tpm``).

Claims: ``snp`` or ``tdx`` (the hardware's, as those TEEs name them), ``tpm`` (the vTPM quote's:
PCRs, clock history), ``hcl`` (the runtime data's VM configuration and keys), ``debug`` (the
hardware's debug bit). ``tcb``: TDX's from Intel's collateral; SEV-SNP's ``NotEvaluated`` (AMD
publishes no TCB status; the reported TCB is a claim).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cryptography import x509

from keybroker import strictjson
from keybroker.errors import CollateralError, EvidenceParseError, InvalidInput, VerificationError
from keybroker.tee.azure.evidence import MAX_EVIDENCE, AzureEvidence, parse_trustee_evidence
from keybroker.tee.azure.hcl import parse_hcl_report
from keybroker.tee.azure.verify import (
    HardwareEvidence,
    VerifiedAzureVtpm,
    VerifiedHardware,
    verify_azure_vtpm,
)
from keybroker.tee.dcap.abi import parse_quote
from keybroker.tee.dcap.chain import TrustedRoots
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.sources import CollateralSource
from keybroker.tee.dcap.verify import CHECKS as DCAP_CHECKS
from keybroker.tee.dcap.verify import VerifiedQuote as VerifiedTdQuote
from keybroker.tee.dcap.verify import platform_of, verify_parsed_quote
from keybroker.tee.snp.certs import load_certificate_ders
from keybroker.tee.snp.plugin import dev_arks
from keybroker.tee.snp.verify import CHECKS as SNP_CHECKS
from keybroker.tee.snp.verify import VerifiedSnpReport, verify_report
from keybroker.tee.tpm.plugin import NOT_EVALUATED, expected_extra_data, observe_clock
from keybroker.tee.tpm.trust import TpmTrust
from keybroker.tee.tpm.verify import NO_NONCE
from keybroker.tee.verifier import Binding, VerifiedEvidence

__all__ = ["AZURE_TEES", "AzureEndorsements", "AzureVtpmVerifier", "VerifiedAzure"]

Hardware = Literal["snp", "tdx"]
AZURE_TEES: Final[dict[str, Hardware]] = {"az-snp-vtpm": "snp", "az-tdx-vtpm": "tdx"}


@dataclass(frozen=True, slots=True)
class AzureEndorsements:
    """What a caller may give besides the evidence: AMD's chain for the VCEK (ASK, ARK; None: the
    shipped ASK), or the TD quote's collateral (None: the trust's source)."""

    snp_chain: tuple[bytes, ...] | None = None
    td_collateral: QuoteCollateral | None = None


@dataclass(frozen=True, slots=True)
class VerifiedAzure:
    """A verified Azure vTPM evidence: the chain of ``verify_azure_vtpm``, the hardware's own
    verified result, the vTPM AK's clock history."""

    name: str
    azure: VerifiedAzureVtpm
    snp: VerifiedSnpReport | None
    td_quote: VerifiedTdQuote | None
    clock: dict[str, Any]
    checks: tuple[str, ...]

    @property
    def hardware(self) -> Hardware:
        return self.azure.tee

    def hardware_claims(self) -> dict[str, Any]:
        if self.snp is not None:
            return self.snp.claims.to_dict()
        assert self.td_quote is not None
        return self.td_quote.claims.to_dict()

    @property
    def debug(self) -> bool:
        if self.snp is not None:
            return self.snp.claims.debug
        assert self.td_quote is not None
        return self.td_quote.claims.debug

    @property
    def sim(self) -> bool:
        return self.snp.sim if self.snp is not None else bool(self.td_quote and self.td_quote.sim)

    def tcb(self) -> dict[str, Any]:
        if self.td_quote is None:
            return {"status": NOT_EVALUATED, "advisory_ids": []}
        q = self.td_quote
        return {
            "status": q.status,
            "advisory_ids": list(q.advisory_ids),
            "collateral_expiry": q.collateral_expiry.isoformat(),
            "tcb_date": q.tcb_date.isoformat(),
        }

    def claims_dict(self) -> dict[str, Any]:
        full = self.azure.claims()
        tpm = full["tpm"]
        tpm["clock_history"] = self.clock
        tpm["ak"]["trust"] = {"mode": "hardware", "vendor": None, "enrolment": None}
        return {
            "tee": self.name,
            "debug": self.debug,
            self.hardware: self.hardware_claims(),
            "tpm": tpm,
            "hcl": full["hcl"],
        }

    def report(self) -> dict[str, Any]:
        tcb = self.tcb()
        return {
            "tee": self.name,
            "status": tcb["status"],
            "advisory_ids": tcb["advisory_ids"],
            "checks": list(self.checks),
            "sim": self.sim,
            "report_data": self.azure.quote.extra_data.hex(),
            "evidence_sha256": evidence_digest(self.azure.hcl.raw, self.azure.quote.attest.raw),
            "claims": self.claims_dict(),
        }

    def summary(self) -> list[tuple[str, str]]:
        hw = "SEV-SNP report" if self.snp is not None else "TD quote"
        tcb = self.tcb()
        return [
            ("TEE", f"Azure confidential VM ({self.hardware.upper()}) through its vTPM"),
            ("hardware", f"{hw}, TCB status {tcb['status']}"),
            ("HCL report", f"version {self.azure.hcl.version}, runtime data bound to the hardware report"),
            ("vTPM quote", f"{self.azure.quote.signature_scheme} by HCLAkPub, 24 SHA-256 PCRs"),
            ("extraData", self.azure.quote.extra_data.hex() or "(empty)"),
            ("checks", ", ".join(self.checks)),
        ]

    def ear_claims(self) -> dict[str, Any]:
        hw = self.hardware_claims()
        out: dict[str, Any] = {"attester_type": self.name.upper()}
        if self.snp is not None:
            out["snp_measurement"] = hw["measurement"]
        else:
            out["tdx_mrtd"] = hw["mr_td"]
        out["tpm_pcrs"] = {"sha256": {str(i): v.hex() for i, v in self.azure.quote.pcrs[0][1]}}
        return out


def evidence_digest(hcl_report: bytes, quote: bytes) -> str:
    """One digest for one Azure evidence: over the HCL report (zero tail removed) and the TPMS_ATTEST."""
    return hashlib.sha256(
        hashlib.sha256(hcl_report.rstrip(b"\x00")).digest() + hashlib.sha256(quote).digest()
    ).hexdigest()


class AzureVtpmVerifier:
    """Verifies Trustee's ``az-snp-vtpm`` or ``az-tdx-vtpm`` evidence."""

    def __init__(
        self,
        name: str,
        *,
        collateral: CollateralSource,
        dev_roots: Iterable[x509.Certificate] = (),
        tpm: TpmTrust | None = None,
    ) -> None:
        if name not in AZURE_TEES:
            raise ValueError(f"Azure vTPM verifiers are {', '.join(AZURE_TEES)}, not {name!r}")
        self._name = name
        self._hardware: Hardware = AZURE_TEES[name]
        self.collateral = collateral
        self._dev_roots = tuple(dev_roots)
        self._roots = TrustedRoots(self._dev_roots)
        self._dev_arks = dev_arks(self._dev_roots)  # the SEV-SNP report's: the others are not ARKs
        self._tpm = tpm or TpmTrust()

    @property
    def name(self) -> str:
        return self._name

    @property
    def checks(self) -> tuple[str, ...]:
        hardware = tuple(c for c in (SNP_CHECKS if self._hardware == "snp" else DCAP_CHECKS) if c != "parse")
        extra = ("vmpl",) if self._hardware == "snp" else ("td_report",)
        return (
            "hcl_report",
            *hardware,
            "report_data",
            *extra,
            "signature",
            "pcr_selection",
            "pcr_digest",
            "user_data",
        )

    def recognizes(self, evidence: bytes) -> bool:
        """Trustee's JSON of this hardware: SNP has a VCEK, TDX a TD quote (a header check)."""
        if evidence.lstrip()[:1] != b"{" or len(evidence) > MAX_EVIDENCE:
            return False
        try:
            doc = strictjson.loads(evidence, what="Azure vTPM evidence", field="evidence")
        except InvalidInput:
            return False
        if not isinstance(doc, dict):
            return False
        if self._hardware == "snp":
            return "vcek" in doc and ("report" in doc or "hcl_report" in doc)
        return "td_quote" in doc and "hcl_report" in doc

    def parse(self, evidence: bytes) -> AzureEvidence:
        parsed = parse_trustee_evidence(evidence, self._hardware)
        hcl = parse_hcl_report(parsed.hcl_report)
        if hcl.report_type != self._hardware:
            raise VerificationError(
                f"the HCL report holds a {hcl.report_type.upper()} report, not {self._hardware.upper()}",
                check="hcl_report",
            )
        return parsed

    def _endorsements(self, endorsements: object | None) -> AzureEndorsements:
        if endorsements is None:
            return AzureEndorsements()
        if isinstance(endorsements, AzureEndorsements):
            return endorsements
        if isinstance(endorsements, QuoteCollateral):
            return AzureEndorsements(td_collateral=endorsements)
        raise TypeError(f"Azure endorsements are AzureEndorsements, not {type(endorsements).__name__}")

    def verify(self, parsed: AzureEvidence, *, at: datetime, endorsements: object | None) -> VerifiedAzure:
        given = self._endorsements(endorsements)
        found: dict[str, Any] = {}

        def hardware(e: HardwareEvidence) -> VerifiedHardware:
            if e.tee == "snp":
                if e.vcek is None:
                    raise EvidenceParseError("SNP evidence without a VCEK", field="evidence.vcek")
                report = verify_report(
                    e.report, vcek_or_vlek=e.vcek, chain=given.snp_chain, at=at, dev_roots=self._dev_arks
                )
                if report.report.vmpl != 0:
                    raise VerificationError(
                        f"the SEV-SNP report was requested at VMPL {report.report.vmpl}, not 0 (the "
                        "paravisor's): a less privileged guest could have bound an AK of its own",
                        check="vmpl",
                    )
                found["snp"] = report
                return VerifiedHardware(report.report_data, {})
            unverified = parse_quote(e.report)
            if unverified.tee != "tdx":
                raise VerificationError("the TD quote is not a TDX quote", check="tee_type")
            collateral = given.td_collateral
            if collateral is None:
                fmspc, pck_ca = platform_of(unverified)
                collateral = self.collateral.collateral_for(tee="tdx", fmspc=fmspc, pck_ca=pck_ca, at=at)
            quote = verify_parsed_quote(unverified, collateral, at=at, roots=self._roots)
            found["tdx"] = quote
            return VerifiedHardware(quote.report_data, {})

        azure = verify_azure_vtpm(parsed, expected_nonce=NO_NONCE, verify_hardware=hardware)
        checks = list(azure.checks)
        hw_checks = [c for c in (found["snp"] if "snp" in found else found["tdx"]).checks if c != "parse"]
        if "snp" in found:
            hw_checks.append("vmpl")
        at_hw = checks.index("hardware")
        checks[at_hw : at_hw + 1] = hw_checks
        if parsed.version >= 2:
            self._check_user_data(azure)
            checks.append("user_data")
        clock = observe_clock(self._tpm, azure.quote)
        return VerifiedAzure(
            name=self._name,
            azure=azure,
            snp=found.get("snp"),
            td_quote=found.get("tdx"),
            clock=clock,
            checks=tuple(checks),
        )

    @staticmethod
    def _check_user_data(azure: VerifiedAzureVtpm) -> None:
        """Evidence version 2: the HCL report was made for this challenge too (Trustee's step 5)."""
        extra = azure.quote.extra_data
        user_data = azure.hcl.user_data
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

    def claims(self, verified: VerifiedAzure) -> VerifiedEvidence:
        return VerifiedEvidence(
            tee=self._name,
            claims=verified.claims_dict(),
            tcb=verified.tcb(),
            report_data=verified.azure.quote.extra_data,
            sim=verified.sim,
            evidence_sha256=evidence_digest(verified.azure.hcl.raw, verified.azure.quote.attest.raw),
            checks=verified.checks,
            detail=verified,
        )

    def expected_report_data(self, bound: Binding) -> bytes:
        return expected_extra_data(bound)

    def evidence_sha256(self, evidence: bytes) -> str:
        try:
            parsed = parse_trustee_evidence(evidence, self._hardware)
        except EvidenceParseError:
            return hashlib.sha256(evidence).hexdigest()
        return evidence_digest(parsed.hcl_report, parsed.quote)

    def endorsements(self, text: str | bytes) -> AzureEndorsements:
        """az-tdx-vtpm: the TD quote's collateral (dcap-qvl ``QuoteCollateralV3`` JSON); az-snp-vtpm:
        ``{"cert_chain": "<PEM ASK and ARK>"}``."""
        if self._hardware == "tdx":
            return AzureEndorsements(td_collateral=QuoteCollateral.from_json(text))
        try:
            doc = json.loads(text)
        except ValueError:
            raise CollateralError("az-snp-vtpm endorsements: not JSON") from None
        chain = doc.get("cert_chain") if isinstance(doc, dict) else None
        if not isinstance(chain, str) or set(doc) != {"cert_chain"}:
            raise CollateralError('az-snp-vtpm endorsements are {"cert_chain": "<PEM ASK and ARK>"}')
        try:
            ders = load_certificate_ders(chain.encode(), field="cert_chain")
        except (InvalidInput, EvidenceParseError) as exc:
            raise CollateralError(f"az-snp-vtpm endorsements: {exc.detail}") from None
        return AzureEndorsements(snp_chain=ders)

    def kbs_v0_evidence(self, primary: Mapping[str, Any]) -> bytes:
        """``primary_evidence`` is Trustee's evidence object itself."""
        return json.dumps(dict(primary), separators=(",", ":")).encode()
