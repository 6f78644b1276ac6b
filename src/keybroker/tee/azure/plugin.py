"""Azure confidential VMs behind the verifier interface: ``az-snp-vtpm`` and ``az-tdx-vtpm`` (the
names Confidential Containers Trustee uses), one :class:`AzureVtpmVerifier` each.

The evidence is Trustee's JSON (``evidence``). ``verify`` runs ``verify.verify_azure_vtpm`` with the
hardware verified by the very plugin that verifies that TEE on its own, so that one trust decision
lives in one place: the SEV-SNP report in the HCL slot by ``tee.snp.plugin.SnpVerifier`` (the VCEK
the attester sent and the caller's chain, to AMD's pinned ARKs or a configured dev ARK; the report
must come from VMPL 0, the paravisor's: a report a less privileged guest asked for could bind an AK
the guest made), the TD quote by ``tee.dcap.plugin.DcapVerifier`` (collateral from its source or
the caller). For evidence version 2, the HCL runtime data's ``user-data`` must start with the
quote's extraData (``verify``). The quote's extraData is the report data the ``Verifier`` compares
with the protocol's binding (as for ``tpm``).

Claims: ``snp`` or ``tdx`` (the hardware's, exactly as those TEEs' plugins give them), ``tpm`` (the
vTPM quote's: PCRs, clock history), ``hcl`` (the runtime data's VM configuration and keys),
``debug`` (the hardware's debug bit). ``tcb``: the hardware plugin's: TDX's from Intel's
collateral, SEV-SNP's ``NoVendorStatus`` (AMD publishes no TCB status; ``minimum_tcb`` judges it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cryptography.x509.oid import NameOID

from keybroker import strictjson
from keybroker.errors import (
    CollateralError,
    CollateralNotFound,
    EvidenceParseError,
    InvalidInput,
    VerificationError,
)
from keybroker.tee.azure.evidence import MAX_EVIDENCE, AzureEvidence, parse_trustee_evidence
from keybroker.tee.azure.hcl import parse_hcl_report
from keybroker.tee.azure.verify import (
    HardwareEvidence,
    VerifiedAzureVtpm,
    VerifiedHardware,
    verify_azure_vtpm,
)
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import DcapVerifier
from keybroker.tee.snp.certs import load_certificate_ders
from keybroker.tee.snp.plugin import SnpEvidence, SnpVerifier
from keybroker.tee.snp.sources import SnpEndorsements
from keybroker.tee.tpm.plugin import expected_extra_data, observe_clock
from keybroker.tee.tpm.trust import TpmTrust
from keybroker.tee.tpm.verify import NO_NONCE
from keybroker.tee.verifier import Binding, VerifiedEvidence
from keybroker.tee.x509 import X509_DECODE_ERRORS, decode_certificate

__all__ = ["AZURE_TEES", "AzureEndorsements", "AzureVtpmVerifier", "VerifiedAzure"]

Hardware = Literal["snp", "tdx"]
AZURE_TEES: Final[dict[str, Hardware]] = {"az-snp-vtpm": "snp", "az-tdx-vtpm": "tdx"}


@dataclass(frozen=True, slots=True)
class AzureEndorsements:
    """What a caller may give besides the evidence: AMD's chain for the VCEK (ASK, ARK; None: the
    shipped ASK), or the TD quote's collateral (None: the trust's source)."""

    snp_chain: tuple[bytes, ...] | None = None
    #: AMD CRLs given with the chain (applied besides the verifier's trusted ones).
    snp_crls: tuple[bytes, ...] = ()
    td_collateral: QuoteCollateral | None = None


@dataclass(frozen=True, slots=True)
class VerifiedAzure:
    """A verified Azure vTPM evidence: the chain of ``verify_azure_vtpm``, the hardware's result as
    its own TEE's plugin gives it (claims, TCB, ``sim``), the vTPM AK's clock history."""

    name: str
    azure: VerifiedAzureVtpm
    hardware_evidence: VerifiedEvidence
    clock: dict[str, Any]
    checks: tuple[str, ...]

    @property
    def hardware(self) -> Hardware:
        return self.azure.tee

    def hardware_claims(self) -> dict[str, Any]:
        return dict(self.hardware_evidence.claims)

    @property
    def debug(self) -> bool:
        return self.hardware_evidence.claims.get("debug") is not False

    @property
    def sim(self) -> bool:
        return self.hardware_evidence.sim

    def tcb(self) -> dict[str, Any]:
        return dict(self.hardware_evidence.tcb)

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
        hw = "SEV-SNP report" if self.hardware == "snp" else "TD quote"
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
        if self.hardware == "snp":
            out["snp_measurement"] = hw["measurement"]
        else:
            out["tdx_mrtd"] = hw["mr_td"]
        out["tpm_pcrs"] = {"sha256": {str(i): v.hex() for i, v in self.azure.quote.pcrs[0][1]}}
        return out


def _common_name(der: bytes) -> str | None:
    """A certificate's subject CN (None when it has none or does not decode: the verifier refuses it)."""
    try:
        cns = decode_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except X509_DECODE_ERRORS:
        return None
    return str(cns[0].value) if len(cns) == 1 else None


def evidence_digest(hcl_report: bytes, quote: bytes) -> str:
    """One digest for one Azure evidence: over the HCL report (zero tail removed) and the TPMS_ATTEST."""
    return hashlib.sha256(
        hashlib.sha256(hcl_report.rstrip(b"\x00")).digest() + hashlib.sha256(quote).digest()
    ).hexdigest()


class AzureVtpmVerifier:
    """Verifies Trustee's ``az-snp-vtpm`` or ``az-tdx-vtpm`` evidence; ``hardware`` is the plugin of
    its hardware TEE (an :class:`SnpVerifier` or the ``tdx`` :class:`DcapVerifier`), built with the
    same trust as the server's ``snp`` or ``tdx``."""

    def __init__(
        self, name: str, hardware: SnpVerifier | DcapVerifier, *, tpm: TpmTrust | None = None
    ) -> None:
        if name not in AZURE_TEES:
            raise ValueError(f"Azure vTPM verifiers are {', '.join(AZURE_TEES)}, not {name!r}")
        if hardware.name != AZURE_TEES[name]:
            raise ValueError(f"{name} needs the {AZURE_TEES[name]} plugin, not {hardware.name!r}")
        self._name = name
        self._hardware: Hardware = AZURE_TEES[name]
        self._plugin = hardware
        self._tpm = tpm or TpmTrust()

    @property
    def name(self) -> str:
        return self._name

    @property
    def checks(self) -> tuple[str, ...]:
        hardware = tuple(c for c in self._plugin.checks if c != "parse")
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

    def _verify_hardware(
        self, e: HardwareEvidence, given: AzureEndorsements, at: datetime
    ) -> VerifiedEvidence:
        """The hardware evidence through its own TEE's plugin: parse, verify, claims."""
        plugin = self._plugin
        if isinstance(plugin, SnpVerifier):
            if e.vcek is None:
                raise EvidenceParseError("SNP evidence without a VCEK", field="evidence.vcek")
            parsed = plugin.parse(e.report)
            endorsements = SnpEndorsements((e.vcek,), given.snp_crls, origin="the evidence's VCEK")
            if given.snp_chain is not None:
                chain = tuple(c for c in given.snp_chain if c != e.vcek)
                endorsements = SnpEndorsements(
                    (e.vcek, *chain), given.snp_crls, origin="the evidence's VCEK and the given chain"
                )
            else:
                endorsements = self._with_cached_chain(parsed, endorsements, at)
            # whichever chain: the SEV-SNP plugin applies its trusted CRLs (the KDS cache's) and
            # requires one for the chain's ARK (snp.require_crl), as for a plain SEV-SNP report
            result = plugin.claims(plugin.verify(parsed, at=at, endorsements=endorsements))
            vmpl = result.claims.get("vmpl")
            if vmpl != 0:
                raise VerificationError(
                    f"the SEV-SNP report was requested at VMPL {vmpl}, not 0 (the paravisor's): a less "
                    "privileged guest could have bound an AK of its own",
                    check="vmpl",
                )
            return result
        return plugin.claims(plugin.verify(plugin.parse(e.report), at=at, endorsements=given.td_collateral))

    def _with_cached_chain(self, parsed: SnpEvidence, sent: SnpEndorsements, at: datetime) -> SnpEndorsements:
        """The evidence carries the VCEK alone. Its ASK/ARK come from the SEV-SNP verifier's source
        (the KDS cache) when it holds them for this report, else AMD's shipped ASK; either way the
        plugin checks revocation with its trusted CRLs (``SnpVerifier``), as for a plain report."""
        assert isinstance(self._plugin, SnpVerifier)
        try:
            cached = self._plugin.source_endorsements(parsed, at)
        except CollateralNotFound:
            return sent
        if cached is None:
            return sent
        vcek = sent.certificates[0]
        chain = tuple(c for c in cached.certificates if _common_name(c) != "SEV-VCEK" and c != vcek)
        return SnpEndorsements(
            (vcek, *chain), (*sent.crls, *cached.crls), origin="the evidence's VCEK and the KDS cache's chain"
        )

    def verify(self, parsed: AzureEvidence, *, at: datetime, endorsements: object | None) -> VerifiedAzure:
        given = self._endorsements(endorsements)
        found: list[VerifiedEvidence] = []

        def hardware(e: HardwareEvidence) -> VerifiedHardware:
            result = self._verify_hardware(e, given, at)
            found.append(result)
            return VerifiedHardware(result.report_data, {})

        azure = verify_azure_vtpm(parsed, expected_nonce=NO_NONCE, verify_hardware=hardware)
        (result,) = found
        checks = list(azure.checks)
        hw_checks = [c for c in result.checks if c != "parse"]
        if self._hardware == "snp":
            hw_checks.append("vmpl")
        at_hw = checks.index("hardware")
        checks[at_hw : at_hw + 1] = hw_checks
        clock = observe_clock(self._tpm, azure.quote)
        return VerifiedAzure(
            name=self._name,
            azure=azure,
            hardware_evidence=result,
            clock=clock,
            checks=tuple(checks),
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
