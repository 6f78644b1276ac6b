"""Verify an AMD SEV-SNP attestation report against its VCEK or VLEK chain at an injected time.

Steps (each a named check, in this order; a failure raises ``VerificationError(check=<name>)``):

1. ``parse``: exact length, version 2-5, every must-be-zero range and bit, including the unsigned
   0x330-0x49F (``abi.parse_report``; failures are ``EvidenceParseError``).
2. ``signing_key``: KEY_INFO names the VCEK (0) or the VLEK (1) and MASK_CHIP_KEY is clear; a
   report with MASK_CHIP_KEY set or signing key 7 carries no signature (virtee/sev ``KeyInfo``).
   The signer is chosen from this field, never from whatever certificate came along
   (microsoft/TEE-Attestation-Verification#142 accepted ARK -> ASVK -> VLEK as a VCEK).
3. ``cert_chain``: VCEK <- ASK <- ARK, or VLEK <- ASVK <- ARK, hop by hop: AMD's names, RSA-4096
   CAs, a P-384 leaf, RSASSA-PSS SHA-384 salt 48 on every signature, the ARK one of AMD's three
   pinned keys or a configured dev root (``certs.verify_chain``).
4. ``vcek_extensions`` / ``product`` (inside 3): the leaf's AMD extensions are well formed and
   its productName names the chain's product.
5. ``crl``: the given CRLs of the chain's ARK are signed by it, current at ``at``, and do not list
   the ASK/ASVK; at least one must apply unless the caller waives it (``require_crl=False``).
6. ``validity_window``: ARK, ASK/ASVK and VCEK/VLEK (and the CRLs applied) are valid at ``at``.
7. ``report_signature``: ECDSA P-384 over SHA-384(report[0:0x2A0]) by the leaf key; R and S are
   little-endian (go-sev-guest ``AmdBigInt``).
8. ``product``: for report version 3+, the CPUID family/model name the chain's product (a Genoa
   report cannot be passed off with a Milan VCEK and vice versa); version 2 has no CPUID and the
   product is the chain's.
9. ``tcb_binding``: the leaf's SPLs equal REPORTED_TCB byte for byte, decoded in the product's
   TCB_VERSION layout (Turin: FMC first; virtee/snphost#125) [trustee ``verify_report_tcb``].
10. ``chip_id`` (VCEK): hwID equals CHIP_ID (Turin: hwID is CHIP_ID[0:8] and the rest of CHIP_ID
    is zero). A VLEK is not chip-bound and CHIP_ID may be masked (zero).
11. ``tcb_order``: REPORTED_TCB <= COMMITTED_TCB <= CURRENT_TCB component by component
    (enarx/steward#154): the firmware never reports a TCB above the one it has committed, nor
    runs below its committed one; a report that says otherwise is misread or not genuine.

ECDSA malleability: (R, n - S) verifies whenever (R, S) does; both are accepted (the firmware does
not normalise S) and ``evidence_sha256`` is computed over the low-S form, so they are one report.

What remains for policy (claims, not errors): debug, migration agent, SMT, VMPL, ID block, guest
SVN, firmware versions and provisional firmware, TCB minimums, platform info, mitigation vectors.

Time-independent work (the chain's RSA signatures, extension parsing) is cached by the
certificates' bytes; the report signature and everything that depends on ``at`` run every call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import VerificationError
from keybroker.tee.snp.abi import (
    SIG_R_END,
    SIG_S_END,
    AttestationReport,
    Product,
    ReportTcbs,
    SigningKey,
    parse_report,
)
from keybroker.tee.snp.certs import RootKind, check_crls, check_validity, verify_chain
from keybroker.tee.snp.claims import SnpClaims, claims_from_report

__all__ = ["CHECKS", "VerifiedSnpReport", "canonical_report", "signing_key_of", "verify_report"]

CHECKS: Final = (
    "parse",
    "signing_key",
    "cert_chain",
    "vcek_extensions",
    "crl",
    "validity_window",
    "report_signature",
    "product",
    "tcb_binding",
    "chip_id",
    "tcb_order",
)

_ECDSA_SHA384: Final = ec.ECDSA(hashes.SHA384())
# The order of P-384: r and s must lie in [1, n-1] (OpenSSL checks too; this gives the message).
_P384_N: Final = (
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
)


@dataclass(frozen=True, slots=True)
class VerifiedSnpReport:
    """The result of a successful verification. ``claims`` are trustworthy; policy decides on them."""

    report: AttestationReport
    product: Product
    signing_key: SigningKey
    tcbs: ReportTcbs
    claims: SnpClaims
    #: "amd": the chain ends at a pinned AMD ARK; "dev": at a configured dev root (the simulator).
    root: RootKind
    sim: bool
    report_data: bytes
    checks: tuple[str, ...]
    #: The earliest notAfter (or CRL nextUpdate) among what was checked.
    expiry: datetime
    #: VLEK only: the cloud provider it was issued to.
    csp_id: str | None
    #: SHA-256 of the signing certificate's DER.
    signer_sha256: str
    #: SHA-256 of the report with S in its low form (:func:`canonical_report`): one report, one digest.
    evidence_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "tee": "snp",
            "product": self.product,
            "signing_key": self.signing_key,
            "root": self.root,
            "sim": self.sim,
            "report_data": self.report_data.hex(),
            "checks": list(self.checks),
            "expiry": self.expiry.isoformat(),
            "csp_id": self.csp_id,
            "signer_sha256": self.signer_sha256,
            "evidence_sha256": self.evidence_sha256,
            "claims": self.claims.to_dict(),
        }


def verify_report(
    raw_report: bytes,
    *,
    vcek_or_vlek: bytes | x509.Certificate,
    chain: Sequence[bytes | x509.Certificate] | None = None,
    crls: Sequence[bytes | x509.CertificateRevocationList] = (),
    at: datetime,
    dev_roots: Sequence[x509.Certificate] = (),
    require_crl: bool = True,
) -> VerifiedSnpReport:
    """Verify ``raw_report`` (1184 bytes) signed by ``vcek_or_vlek`` (DER or a certificate) at ``at``.

    ``chain``: AMD's ``cert_chain`` for the product (ASK or ASVK, optionally the ARK; any order),
    or None for the shipped ASK/ASVK. AMD's three ARK keys are always trusted; ``dev_roots`` are
    additional, explicitly configured roots (the simulator's), and a report verified through one
    has ``sim`` true. ``crls``: AMD CRLs (DER or objects); those of the chain's ARK are applied.
    ``require_crl`` (the default): one of them must apply, else ``VerificationError(crl)``: without
    a current CRL of its ARK a revoked ASK/ASVK would pass. ``False`` waives that, and only that
    (the CRLs given are still applied): for reports whose CRL of that time was not kept.
    Raises ``EvidenceParseError`` (malformed report) or ``VerificationError`` naming the check.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")
    checks: list[str] = []

    # 1. parse
    unverified_report = parse_report(raw_report)
    checks.append("parse")

    # 2. signing_key
    kind = signing_key_of(unverified_report)
    checks.append("signing_key")

    # 3-4. cert_chain, vcek_extensions (cached by the certificates' bytes)
    verified_chain = verify_chain(vcek_or_vlek, chain, kind=kind, dev_roots=dev_roots)
    product = verified_chain.product
    checks += ["cert_chain", "vcek_extensions"]

    # 5. crl
    crl_windows = check_crls(verified_chain, crls, at=at, require=require_crl)
    checks.append("crl")

    # 6. validity_window
    expiry = check_validity((*verified_chain.windows, *crl_windows), at)
    checks.append("validity_window")

    # 7. report_signature
    r, s = unverified_report.signature_r, unverified_report.signature_s
    if not (0 < r < _P384_N and 0 < s < _P384_N):
        raise VerificationError("the report's signature R or S is outside [1, n-1]", check="report_signature")
    try:
        verified_chain.leaf_key.verify(
            encode_dss_signature(r, s), unverified_report.signed_data, _ECDSA_SHA384
        )
    except InvalidSignature:
        raise VerificationError(
            f"the report signature does not verify under the {kind.upper()} (SHA-256 {verified_chain.leaf_sha256[:16]}…)",
            check="report_signature",
        ) from None
    checks.append("report_signature")
    verified_report = unverified_report

    # 8. product
    if verified_report.cpuid is not None:
        cpuid = verified_report.cpuid
        if cpuid.product is None:
            raise VerificationError(
                f"CPUID family 0x{cpuid.family:02x} model 0x{cpuid.model:02x} is not Milan, Genoa or Turin",
                check="product",
            )
        if cpuid.product != product:
            raise VerificationError(
                f"the report's CPUID (family 0x{cpuid.family:02x} model 0x{cpuid.model:02x}) is {cpuid.product}, "
                f"its {kind.upper()} chain is {product}",
                check="product",
            )
    checks.append("product")

    # 9. tcb_binding
    tcbs = verified_report.tcbs(product)
    ext = verified_chain.ext
    if ext.tcb != tcbs.reported or ext.tcb.encode(product) != verified_report.reported_tcb:
        raise VerificationError(
            f"REPORTED_TCB {verified_report.reported_tcb.hex()} ({_tcb_text(tcbs.reported.components())}) is not "
            f"the {kind.upper()}'s TCB ({_tcb_text(ext.tcb.components())})",
            check="tcb_binding",
        )
    checks.append("tcb_binding")

    # 10. chip_id
    if kind == "vcek":
        hwid = ext.hwid
        assert hwid is not None  # parse_amd_extensions
        chip = verified_report.chip_id
        if product == "Turin" and any(chip[len(hwid) :]):
            raise VerificationError(
                "a Turin CHIP_ID uses bytes 0-7 only, but bytes 8-63 are not zero", check="chip_id"
            )
        if chip[: len(hwid)] != hwid:
            raise VerificationError(
                f"CHIP_ID {chip[:8].hex()}… is not the VCEK's hwID {hwid[:8].hex()}… (a VCEK of another chip)",
                check="chip_id",
            )
        checks.append("chip_id")

    # 11. tcb_order
    if not tcbs.reported.le(tcbs.committed) or not tcbs.committed.le(tcbs.current):
        raise VerificationError(
            f"TCBs out of order: reported ({_tcb_text(tcbs.reported.components())}) <= committed "
            f"({_tcb_text(tcbs.committed.components())}) <= current ({_tcb_text(tcbs.current.components())}) "
            "does not hold",
            check="tcb_order",
        )
    checks.append("tcb_order")

    return VerifiedSnpReport(
        report=verified_report,
        product=product,
        signing_key=kind,
        tcbs=tcbs,
        claims=claims_from_report(
            verified_report, product=product, signing_key=kind, tcbs=tcbs, csp_id=ext.csp_id
        ),
        root=verified_chain.root,
        sim=verified_chain.root == "dev",
        report_data=verified_report.report_data,
        checks=tuple(checks),
        expiry=expiry,
        csp_id=ext.csp_id,
        signer_sha256=verified_chain.leaf_sha256,
        evidence_sha256=hashlib.sha256(canonical_report(verified_report)).hexdigest(),
    )


def signing_key_of(unverified_report: AttestationReport) -> SigningKey:
    """The key KEY_INFO says signed the report (VCEK or VLEK), or ``VerificationError(signing_key)``
    for a report the firmware did not sign (MASK_CHIP_KEY set, or SIGNING_KEY 7)."""
    kind = unverified_report.signing_key
    if unverified_report.key_info.mask_chip_key or kind is None:
        raise VerificationError(
            f"the report is not signed (KEY_INFO 0x{unverified_report.key_info.value:08x}: MASK_CHIP_KEY "
            f"{int(unverified_report.key_info.mask_chip_key)}, SIGNING_KEY {unverified_report.key_info.signing_key_code})",
            check="signing_key",
        )
    return kind


def canonical_report(report: AttestationReport) -> bytes:
    """The report with its signature's S replaced by min(S, n - S).

    ECDSA signatures are malleable: if (R, S) verifies, so does (R, n - S), and AMD's firmware does
    not normalise S. Both encodings carry the same signed bytes and claims; naming evidence by this
    form gives them one digest (as ``dcap.abi.canonical_quote`` does for zero padding).
    """
    s = min(report.signature_s, _P384_N - report.signature_s)
    out = bytearray(report.raw)
    out[SIG_R_END:SIG_S_END] = s.to_bytes(SIG_S_END - SIG_R_END, "little")
    return bytes(out)


def _tcb_text(components: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in components.items())
