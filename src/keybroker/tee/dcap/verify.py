"""Verify an Intel SGX/TDX DCAP quote against collateral at an injected time.

Steps (each a named check, in this order; a failure raises ``VerificationError(check=<name>)``;
numbers in brackets are Intel QVL's step numbers, "Quote verification" 4.1.2.x):

1. ``parse``: the quote's structure (``abi.parse_quote``; failures are ``EvidenceParseError``);
   only zero padding may follow it.
2. ``qe_vendor_id``: the header's QE vendor ID is Intel's (QVL rejects others as an unsupported
   quote format).
3. ``pck_chain``: the PCK chain (quote certification data type 5, else the collateral's) is
   leaf -> PCK Processor/Platform CA -> a trusted root, byte-identical to the pinned Intel SGX Root
   CA or an explicitly configured dev root; ECDSA-P256-SHA256 signatures, CA basic constraints,
   key usage, no unknown critical extension, leaf CN "SGX PCK Certificate" [4.1.2.5.5].
4. ``collateral_chains``: TCB Info, QE Identity and PCK CRL issuer chains end at the same root
   certificate (byte for byte) as the PCK chain, so that this root's CRL is the one checked.
5. ``tcb_info_signature`` / ``qe_identity_signature``: ECDSA over the exact signed JSON bytes.
6. ``root_ca_crl``: signed by that root; no intermediate of any chain revoked.
7. ``tee_type``: TCB Info id/version and QE Identity id (QE / TD_QE) fit the quote [4.1.2.5.10, .15].
8. ``fmspc`` / ``pce_id``: the PCK certificate's match TCB Info's [4.1.2.5.11].
9. ``pck_crl``: issued and signed by the quote's PCK CA; the PCK certificate not revoked [4.1.2.5.7-8].
10. ``validity_window``: every certificate, both CRLs (thisUpdate..nextUpdate), TCB Info and QE
    Identity (issueDate..nextUpdate) are valid at ``at`` (bounds inclusive).
11. ``qe_report_signature``: QE report signed by the PCK key [4.1.2.5.13].
12. ``qe_report_data``: QE REPORTDATA = SHA-256(attestation key || QE auth data) || 32 zero bytes [4.1.2.5.14].
13. ``quote_signature``: header || body signed by the attestation key [4.1.2.5.17].
14. ``qe_identity``: MRSIGNER, ISVPRODID, masked MISCSELECT/ATTRIBUTES, ISVSVN level; Revoked rejects [4.1.2.5.16].
15. ``tdx_module`` (TDX): MRSIGNERSEAM / SEAMATTRIBUTES vs the TDX module identity [4.1.2.5.12].
16. ``tcb_level``: Intel's TCB level matching (``tcb.evaluate_tcb``) [4.1.2.5.18].
17. ``tcb_status``: the merged status; Revoked rejects.

A certificate in the quote that does not decode is a ``VerificationError`` of the check that
reads it; collateral is decoded (and refused with ``CollateralError``) when ``QuoteCollateral`` is
built. Nothing else escapes.

Time-independent work (chain and CRL signatures, collateral signatures, JSON parsing) is cached
by content; everything that depends on ``at`` is checked on every call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from keybroker.errors import CollateralError, VerificationError
from keybroker.tee.dcap.abi import INTEL_QE_VENDOR_ID, Quote, TdReportBody, parse_quote
from keybroker.tee.dcap.chain import (
    INTEL_SGX_ROOT_CA,
    Chain,
    RootKind,
    TrustedRoots,
    Window,
    check_signer,
    cn,
    load_certificate,
    spki,
    verify_chain,
)
from keybroker.tee.dcap.claims import SgxClaims, TdxClaims, claims_from_quote
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.pck import (
    PckCa,
    PckExtensions,
    ca_type_from_name,
    crl_signed_by,
    parse_pck_extensions,
    split_pem_chain,
)
from keybroker.tee.dcap.tcb import check_tdx_module, evaluate_tcb, match_qe_identity
from keybroker.tee.x509 import check_validity

__all__ = [
    "CHECKS",
    "INTEL_SGX_ROOT_CA",
    "VerifiedQuote",
    "platform_of",
    "quote_fmspc_and_ca",
    "verify_parsed_quote",
    "verify_quote",
]

CHECKS: Final = (
    "parse",
    "qe_vendor_id",
    "pck_chain",
    "collateral_chains",
    "tcb_info_signature",
    "qe_identity_signature",
    "root_ca_crl",
    "tee_type",
    "fmspc",
    "pce_id",
    "pck_crl",
    "validity_window",
    "qe_report_signature",
    "qe_report_data",
    "quote_signature",
    "qe_identity",
    "tdx_module",
    "tcb_level",
    "tcb_status",
)


_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True, slots=True)
class VerifiedQuote:
    """The result of a successful verification. ``claims`` are trustworthy; policy decides on them."""

    tee: Literal["sgx", "tdx"]
    status: str
    advisory_ids: tuple[str, ...]
    collateral_expiry: datetime
    checks: tuple[str, ...]
    claims: SgxClaims | TdxClaims
    fmspc: str
    pck_ca: PckCa
    root: RootKind
    sim: bool
    report_data: bytes
    tcb_date: datetime
    tcb_evaluation_data_number: int
    quote_version: int
    #: SHA-256 of the quote without its zero padding (:func:`abi.canonical_quote`): one quote, one digest.
    evidence_sha256: str

    def report(self) -> dict[str, Any]:
        """:meth:`to_dict` with the times as ``datetime`` (``tee.verifier.TeeResult``)."""
        return {**self.to_dict(), "collateral_expiry": self.collateral_expiry, "tcb_date": self.tcb_date}

    def summary(self) -> list[tuple[str, str]]:
        return [
            ("TEE", f"{self.tee.upper()} (quote v{self.quote_version})"),
            ("TCB status", self.status),
            ("advisories", ", ".join(self.advisory_ids) or "none"),
            ("FMSPC / PCK CA", f"{self.fmspc} / {self.pck_ca}"),
            ("root", self.root),
            ("TCB date", self.tcb_date.isoformat()),
            ("collateral expiry", self.collateral_expiry.isoformat()),
            ("checks", ", ".join(self.checks)),
        ]

    def ear_claims(self) -> dict[str, Any]:
        """Intel Trust Authority's token claim names (intel/trustauthority-kbs reads these)."""
        c = self.claims
        if isinstance(c, SgxClaims):
            return {
                "attester_type": "SGX",
                "sgx_mrenclave": c.mr_enclave.hex(),
                "sgx_mrsigner": c.mr_signer.hex(),
                "sgx_isvprodid": c.isv_prod_id,
                "sgx_isvsvn": c.isv_svn,
                "sgx_is_debuggable": c.debug,
            }
        return {
            "attester_type": "TDX",
            "tdx_mrseam": c.mr_seam.hex(),
            "tdx_mrsignerseam": c.mr_signer_seam.hex(),
            "tdx_seamsvn": c.seam_svn,
            "tdx_mrtd": c.mr_td.hex(),
            "tdx_rtmr0": c.rtmr[0].hex(),
            "tdx_rtmr1": c.rtmr[1].hex(),
            "tdx_rtmr2": c.rtmr[2].hex(),
            "tdx_rtmr3": c.rtmr[3].hex(),
            "tdx_is_debuggable": c.debug,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "tee": self.tee,
            "status": self.status,
            "advisory_ids": list(self.advisory_ids),
            "collateral_expiry": self.collateral_expiry.isoformat(),
            "checks": list(self.checks),
            "claims": self.claims.to_dict(),
            "fmspc": self.fmspc,
            "pck_ca": self.pck_ca,
            "root": self.root,
            "sim": self.sim,
            "report_data": self.report_data.hex(),
            "tcb_date": self.tcb_date.isoformat(),
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
            "quote_version": self.quote_version,
            "evidence_sha256": self.evidence_sha256,
        }


@dataclass(frozen=True, slots=True)
class _PckChain:
    chain: Chain
    leaf_key: ec.EllipticCurvePublicKey
    leaf_serial: int
    leaf_issuer: x509.Name
    leaf_issuer_der: bytes
    intermediate_spki: bytes
    intermediate_serials: frozenset[int]
    ext: PckExtensions
    ca: PckCa


@lru_cache(maxsize=1024)
def _pck_chain(pem: bytes, roots: TrustedRoots) -> _PckChain:
    ders = split_pem_chain(pem, field="pck_cert_chain")
    chain = verify_chain(ders, roots, "PCK chain", "pck_chain")
    leaf = chain.certs[0]
    if "SGX PCK Certificate" not in cn(leaf.subject):
        raise VerificationError(
            f"PCK leaf CN {cn(leaf.subject)!r} lacks 'SGX PCK Certificate'", check="pck_chain"
        )
    if len(chain.certs) != 3:
        raise VerificationError(
            f"PCK chain has {len(chain.certs)} certificates, expected leaf, PCK CA, root", check="pck_chain"
        )
    ca = ca_type_from_name(leaf.issuer)
    if ca is None:
        raise VerificationError(
            f"PCK issuer {cn(leaf.issuer)!r} is neither a PCK Processor CA nor a PCK Platform CA",
            check="pck_chain",
        )
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # _check_cert_profile
    return _PckChain(
        chain=chain,
        leaf_key=key,
        leaf_serial=leaf.serial_number,
        leaf_issuer=leaf.issuer,
        leaf_issuer_der=leaf.issuer.public_bytes(),
        intermediate_spki=spki(chain.certs[1]),
        intermediate_serials=frozenset(c.serial_number for c in chain.certs[1:-1]),
        ext=parse_pck_extensions(leaf),
        ca=ca,
    )


# --- collateral --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _VerifiedCollateral:
    root: RootKind
    root_der: bytes
    windows: tuple[Window, ...]
    root_revoked: frozenset[int]
    pck_revoked: frozenset[int]
    pck_crl_issuer: x509.Name
    pck_crl_issuer_der: bytes
    pck_crl_signer_spki: bytes


def _fingerprint(der: bytes) -> str:
    return f"sha256 {hashlib.sha256(der).hexdigest()[:16]}…"


def _ec_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError(f"{cn(cert.subject)!r} has no EC public key", check="collateral_chains")
    return key


def _raw_sig(sig: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def _verify_json_signature(chain: Chain, text: str, signature: bytes, what: str, check: str) -> None:
    key = chain.certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(_raw_sig(signature), text.encode("utf-8"), _ECDSA_SHA256)
    except InvalidSignature:
        raise VerificationError(
            f"{what} signature does not verify under {cn(chain.certs[0].subject)!r}", check=check
        ) from None


def _crl_window(crl: x509.CertificateRevocationList, what: str, check: str) -> Window:
    next_update = crl.next_update_utc
    if next_update is None:
        raise VerificationError(f"{what} has no nextUpdate", check=check)
    return (what, crl.last_update_utc, next_update)


def _collateral_chain(
    certs: tuple[x509.Certificate, ...], roots: TrustedRoots, name: str, crl_signer: bool = False
) -> Chain:
    ders = tuple(c.public_bytes(Encoding.DER) for c in certs)
    return verify_chain(ders, roots, name, "collateral_chains", crl_signer)


@lru_cache(maxsize=256)
def _verify_collateral(collateral: QuoteCollateral, roots: TrustedRoots) -> _VerifiedCollateral:
    tcb_chain = _collateral_chain(collateral.tcb_info_chain, roots, "TCB Info issuer chain")
    qe_chain = _collateral_chain(collateral.qe_identity_chain, roots, "QE Identity issuer chain")
    crl_chain = _collateral_chain(collateral.pck_crl_chain, roots, "PCK CRL issuer chain", crl_signer=True)
    check_signer(tcb_chain.certs, "TCB Info issuer chain", tcb_signing=True, check="collateral_chains")
    check_signer(qe_chain.certs, "QE Identity issuer chain", tcb_signing=True, check="collateral_chains")
    check_signer(crl_chain.certs, "PCK CRL issuer chain", tcb_signing=False, check="collateral_chains")
    if not tcb_chain.root_der == qe_chain.root_der == crl_chain.root_der:
        raise VerificationError(
            "collateral issuer chains end at different roots: TCB Info at "
            f"{_fingerprint(tcb_chain.root_der)}, QE Identity at {_fingerprint(qe_chain.root_der)}, "
            f"PCK CRL at {_fingerprint(crl_chain.root_der)}",
            check="collateral_chains",
        )
    _verify_json_signature(
        tcb_chain, collateral.tcb_info, collateral.tcb_info_signature, "TCB Info", "tcb_info_signature"
    )
    _verify_json_signature(
        qe_chain,
        collateral.qe_identity,
        collateral.qe_identity_signature,
        "QE Identity",
        "qe_identity_signature",
    )

    root_cert = tcb_chain.certs[-1]
    root_crl = collateral.root_crl
    if root_crl.issuer != root_cert.subject or not crl_signed_by(root_crl, _ec_key(root_cert)):
        raise VerificationError(
            f"root CA CRL (issuer {cn(root_crl.issuer)!r}) is not signed by {cn(root_cert.subject)!r}",
            check="root_ca_crl",
        )
    root_revoked = frozenset(r.serial_number for r in root_crl)
    for chain in (tcb_chain, qe_chain, crl_chain):
        for cert in chain.certs[:-1]:
            if cert.serial_number in root_revoked:
                raise VerificationError(
                    f"{cn(cert.subject)!r} (serial {cert.serial_number:x}) is revoked by the root CA CRL",
                    check="root_ca_crl",
                )

    pck_crl = collateral.pck_crl_parsed
    signer = crl_chain.certs[0]
    if pck_crl.issuer != signer.subject or not crl_signed_by(pck_crl, _ec_key(signer)):
        raise VerificationError(
            f"PCK CRL (issuer {cn(pck_crl.issuer)!r}) is not signed by {cn(signer.subject)!r}",
            check="pck_crl",
        )
    tcb_info = collateral.parsed_tcb_info
    qe_identity = collateral.parsed_qe_identity
    windows = (
        *tcb_chain.windows,
        *qe_chain.windows,
        *crl_chain.windows,
        _crl_window(root_crl, "root CA CRL", "root_ca_crl"),
        _crl_window(pck_crl, f"PCK CRL ({cn(pck_crl.issuer)})", "pck_crl"),
        ("TCB Info", tcb_info.issue_date, tcb_info.next_update),
        (f"{qe_identity.id} Identity", qe_identity.issue_date, qe_identity.next_update),
    )
    return _VerifiedCollateral(
        root=tcb_chain.root,
        root_der=tcb_chain.root_der,
        windows=windows,
        root_revoked=root_revoked,
        pck_revoked=frozenset(r.serial_number for r in pck_crl),
        pck_crl_issuer=pck_crl.issuer,
        pck_crl_issuer_der=pck_crl.issuer.public_bytes(),
        pck_crl_signer_spki=spki(signer),
    )


# --- per-quote ---------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _attestation_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise VerificationError(
            "attestation key is not a valid P-256 point", check="quote_signature"
        ) from None


def _pck_pem(unverified_quote: Quote, collateral: QuoteCollateral) -> bytes:
    pem = unverified_quote.signature.pck_chain_pem
    extra = collateral.pck_certificate_chain
    if extra is not None:
        extra_pem = extra.encode("ascii")
        if pem is None:
            return extra_pem
        if pem.rstrip(b"\x00\r\n ") != extra_pem.rstrip(b"\x00\r\n ") and split_pem_chain(
            pem
        ) != split_pem_chain(extra_pem, field="pck_certificate_chain"):
            raise VerificationError(
                "the collateral's pck_certificate_chain differs from the PCK chain in the quote",
                check="pck_chain",
            )
    if pem is None:
        raise VerificationError(
            f"the quote carries no PCK chain (certification data type "
            f"{unverified_quote.signature.certification.cert_type}) and the collateral has none",
            check="pck_chain",
        )
    return pem


def verify_quote(
    raw: bytes,
    collateral: QuoteCollateral,
    *,
    at: datetime,
    dev_roots: Sequence[x509.Certificate] = (),
    roots: TrustedRoots | None = None,
) -> VerifiedQuote:
    """Verify ``raw`` (an SGX v3 or TDX v4/v5 quote) with ``collateral`` at time ``at``.

    The Intel SGX Root CA is always trusted; ``dev_roots`` are additional, explicitly configured
    roots (the dev TEE simulator), or ``roots`` all of them, built once (``chain.TrustedRoots``).
    Raises ``EvidenceParseError`` (malformed quote) or ``VerificationError`` naming the failed check.
    """
    return verify_parsed_quote(parse_quote(raw), collateral, at=at, dev_roots=dev_roots, roots=roots)


def verify_parsed_quote(
    unverified_quote: Quote,
    collateral: QuoteCollateral,
    *,
    at: datetime,
    dev_roots: Sequence[x509.Certificate] = (),
    roots: TrustedRoots | None = None,
) -> VerifiedQuote:
    """:func:`verify_quote` of a quote ``abi.parse_quote`` parsed already (checks from ``qe_vendor_id`` on)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")
    checks: list[str] = ["parse"]
    vendor = unverified_quote.header.qe_vendor_id
    if vendor != INTEL_QE_VENDOR_ID:
        raise VerificationError(
            f"QE vendor ID {vendor.hex()} is not Intel's {INTEL_QE_VENDOR_ID.hex()}", check="qe_vendor_id"
        )
    checks.append("qe_vendor_id")
    if roots is None:
        roots = TrustedRoots(dev_roots)
    tee = unverified_quote.tee

    pck = _pck_chain(_pck_pem(unverified_quote, collateral), roots)
    checks.append("pck_chain")

    coll = _verify_collateral(collateral, roots)
    if coll.root_der != pck.chain.root_der:
        raise VerificationError(
            f"collateral chains end at the {coll.root} root {_fingerprint(coll.root_der)} but the PCK "
            f"chain at the {pck.chain.root} root {_fingerprint(pck.chain.root_der)}: every chain and "
            "CRL must come from the PCK chain's root",
            check="collateral_chains",
        )
    checks += ["collateral_chains", "tcb_info_signature", "qe_identity_signature"]

    revoked = pck.intermediate_serials & coll.root_revoked
    if revoked:
        raise VerificationError(
            f"PCK CA serial {min(revoked):x} is revoked by the root CA CRL", check="root_ca_crl"
        )
    checks.append("root_ca_crl")

    tcb_info = collateral.parsed_tcb_info
    qe_identity = collateral.parsed_qe_identity
    want_tcb, want_qe = ("TDX", "TD_QE") if tee == "tdx" else ("SGX", "QE")
    if tcb_info.id != want_tcb or (tee == "tdx" and tcb_info.version < 3):
        raise VerificationError(
            f"TCB Info is for {tcb_info.id} (version {tcb_info.version}), the quote is {tee.upper()}",
            check="tee_type",
        )
    if qe_identity.id != want_qe:
        raise VerificationError(
            f"QE Identity is {qe_identity.id!r}, a {tee.upper()} quote needs {want_qe!r}", check="tee_type"
        )
    checks.append("tee_type")

    if pck.ext.fmspc != tcb_info.fmspc:
        raise VerificationError(
            f"PCK certificate FMSPC {pck.ext.fmspc.hex().upper()} differs from TCB Info FMSPC "
            f"{tcb_info.fmspc.hex().upper()}",
            check="fmspc",
        )
    checks.append("fmspc")
    if pck.ext.pce_id != tcb_info.pce_id:
        raise VerificationError(
            f"PCK certificate PCE-ID {pck.ext.pce_id.hex()} differs from TCB Info pceId {tcb_info.pce_id.hex()}",
            check="pce_id",
        )
    checks.append("pce_id")

    if pck.leaf_issuer_der != coll.pck_crl_issuer_der or pck.intermediate_spki != coll.pck_crl_signer_spki:
        raise VerificationError(
            f"PCK CRL is issued by {cn(coll.pck_crl_issuer)!r}, the PCK certificate by {cn(pck.leaf_issuer)!r}",
            check="pck_crl",
        )
    if pck.leaf_serial in coll.pck_revoked:
        raise VerificationError(
            f"PCK certificate serial {pck.leaf_serial:x} is revoked by the PCK CRL", check="pck_crl"
        )
    checks.append("pck_crl")

    expiry = min(check_validity(pck.chain.windows, at), check_validity(coll.windows, at))
    checks.append("validity_window")

    sig = unverified_quote.signature
    try:
        pck.leaf_key.verify(_raw_sig(sig.qe_report_signature), sig.qe_report.raw, _ECDSA_SHA256)
    except InvalidSignature:
        raise VerificationError(
            "QE report signature does not verify under the PCK key", check="qe_report_signature"
        ) from None
    checks.append("qe_report_signature")

    expected = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest()
    report_data = sig.qe_report.report_data
    if report_data[:32] != expected or report_data[32:] != bytes(32):
        raise VerificationError(
            f"QE report data {report_data.hex()} is not SHA-256(attestation key || QE auth data) "
            f"{expected.hex()} followed by zeros",
            check="qe_report_data",
        )
    checks.append("qe_report_data")

    try:
        _attestation_key(sig.attestation_key).verify(
            _raw_sig(sig.quote_signature), unverified_quote.signed_data, _ECDSA_SHA256
        )
    except InvalidSignature:
        raise VerificationError(
            "quote signature does not verify under the attestation key", check="quote_signature"
        ) from None
    checks.append("quote_signature")
    verified_quote = unverified_quote

    qe_level = match_qe_identity(qe_identity, sig.qe_report)
    if qe_level.status == "Revoked":
        raise VerificationError(
            f"QE ISVSVN {sig.qe_report.isv_svn} is at a Revoked {qe_identity.id} TCB level "
            f"(isvsvn {qe_level.isvsvn})",
            check="qe_identity",
        )
    checks.append("qe_identity")

    td = verified_quote.body if isinstance(verified_quote.body, TdReportBody) else None
    module_identity = None
    if td is not None:
        module_identity = check_tdx_module(tcb_info, td)
        checks.append("tdx_module")

    evaluation = evaluate_tcb(tcb_info, pck.ext.tcb_components, pck.ext.pcesvn, qe_level, td, module_identity)
    checks.append("tcb_level")
    if evaluation.status == "Revoked":
        raise VerificationError(
            f"TCB status is Revoked (platform {evaluation.platform_status}, QE {evaluation.qe_status}, "
            f"TDX module {evaluation.module_status}); advisories {list(evaluation.advisory_ids)}",
            check="tcb_status",
        )
    checks.append("tcb_status")

    return VerifiedQuote(
        tee=tee,
        status=evaluation.status,
        advisory_ids=evaluation.advisory_ids,
        collateral_expiry=expiry,
        checks=tuple(checks),
        claims=claims_from_quote(verified_quote),
        fmspc=pck.ext.fmspc.hex().upper(),
        pck_ca=pck.ca,
        root=pck.chain.root,
        sim=pck.chain.root == "dev",
        report_data=verified_quote.report_data,
        tcb_date=evaluation.tcb_date,
        tcb_evaluation_data_number=tcb_info.tcb_evaluation_data_number,
        quote_version=verified_quote.header.version,
        evidence_sha256=hashlib.sha256(verified_quote.canonical).hexdigest(),
    )


def quote_fmspc_and_ca(raw: bytes) -> tuple[str, str, str]:
    """(FMSPC hex upper, PCK CA ``processor``/``platform``, TEE ``sgx``/``tdx``) of an **unverified** quote.

    For choosing collateral from a store; trusts nothing. ``CollateralError`` if the quote carries
    no PCK chain (then the collateral must be chosen by other means); ``EvidenceParseError`` or
    ``VerificationError(check="pck_chain")`` if the chain's leaf does not decode or names no PCK CA.
    """
    unverified_quote = parse_quote(raw)
    fmspc, ca = platform_of(unverified_quote)
    return fmspc, ca, unverified_quote.tee


def platform_of(unverified_quote: Quote) -> tuple[str, str]:
    """(FMSPC hex upper, PCK CA) of a parsed, **unverified** quote: see :func:`quote_fmspc_and_ca`."""
    pem = unverified_quote.signature.pck_chain_pem
    if pem is None:
        raise CollateralError(
            f"quote carries no PCK certificate chain (certification data type "
            f"{unverified_quote.signature.certification.cert_type}); cannot pick collateral from it"
        )
    return _unverified_fmspc_and_ca(pem)


@lru_cache(maxsize=1024)
def _unverified_fmspc_and_ca(pem: bytes) -> tuple[str, str]:
    """FMSPC and PCK CA from an **unverified** PCK chain (cached by its bytes: a platform's chain
    repeats in every quote it makes, and the extension parse costs more than the quote check)."""
    ders = split_pem_chain(pem)
    leaf = load_certificate(ders[0], "PCK chain[0]", "pck_chain")
    ca = ca_type_from_name(leaf.issuer)
    if ca is None:
        raise VerificationError(
            f"PCK issuer {cn(leaf.issuer)!r} is neither a PCK Processor CA nor a PCK Platform CA",
            check="pck_chain",
        )
    return parse_pck_extensions(leaf).fmspc.hex().upper(), ca
