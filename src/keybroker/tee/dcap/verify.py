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
from importlib import resources
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from keybroker.errors import CollateralError, VerificationError
from keybroker.tee.dcap.abi import INTEL_QE_VENDOR_ID, Quote, TdReportBody, parse_quote
from keybroker.tee.dcap.claims import SgxClaims, TdxClaims, claims_from_quote
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.pck import (
    SGX_EXTENSIONS_OID,
    X509_DECODE_ERRORS,
    PckCa,
    PckExtensions,
    ca_type_from_name,
    crl_signed_by,
    decode_certificate,
    parse_pck_extensions,
    split_pem_chain,
)
from keybroker.tee.dcap.tcb import check_tdx_module, evaluate_tcb, match_qe_identity

__all__ = [
    "CHECKS",
    "INTEL_SGX_ROOT_CA",
    "VerifiedQuote",
    "quote_fmspc_and_ca",
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


def _load_intel_root() -> x509.Certificate:
    pem = resources.files("keybroker.tee.dcap").joinpath("roots/intel_sgx_root_ca.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


#: The pinned Intel SGX Root CA (SHA-256 44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3).
INTEL_SGX_ROOT_CA: Final = _load_intel_root()
_INTEL_ROOT_DER: Final = INTEL_SGX_ROOT_CA.public_bytes(Encoding.DER)
_INTEL_ROOT_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
if hashlib.sha256(_INTEL_ROOT_DER).hexdigest() != _INTEL_ROOT_SHA256:  # pragma: no cover - packaging error
    raise RuntimeError("shipped Intel SGX Root CA does not have the pinned fingerprint")

_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_KNOWN_CRITICAL: Final = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})

RootKind = Literal["intel", "dev"]
_Window = tuple[str, datetime, datetime]


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


# --- trusted roots -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Roots:
    """Trusted root DERs: Intel's first, then dev roots. Hashable: used as a cache key."""

    ders: tuple[bytes, ...]

    def kind(self, der: bytes) -> RootKind | None:
        if der == _INTEL_ROOT_DER:
            return "intel"
        return "dev" if der in self.ders else None


_INTEL_ONLY: Final = _Roots((_INTEL_ROOT_DER,))


def _roots(dev_roots: Sequence[x509.Certificate]) -> _Roots:
    if not dev_roots:
        return _INTEL_ONLY
    return _Roots((_INTEL_ROOT_DER, *(c.public_bytes(Encoding.DER) for c in dev_roots)))


# --- certificate chains ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chain:
    certs: tuple[x509.Certificate, ...]
    root: RootKind
    #: The root certificate's DER: chains of one verification must all end at this same root.
    root_der: bytes
    windows: tuple[_Window, ...]


def _cn(name: x509.Name) -> str:
    """The name's CN (else its RFC 4514 form), for messages; names were decoded on load."""
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        value = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    return value


def _load_cert(der: bytes, what: str, check: str) -> x509.Certificate:
    """Load and fully decode a certificate (cryptography decodes fields lazily; do it once, here)."""
    try:
        cert = decode_certificate(der)
    except X509_DECODE_ERRORS as exc:
        raise VerificationError(f"{what}: undecodable certificate ({exc})", check=check) from None
    return cert


def _check_cert_profile(cert: x509.Certificate, what: str, check: str) -> None:
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise VerificationError(f"{what}: signature algorithm is not ecdsa-with-SHA256", check=check)
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError(f"{what}: public key is not ECDSA P-256", check=check)
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise VerificationError(
                f"{what}: unknown critical extension {ext.oid.dotted_string}", check=check
            )


def _verify_chain_uncached(
    ders: tuple[bytes, ...], roots: _Roots, name: str, check: str, crl_signer: bool
) -> _Chain:
    """Verify ``ders`` (leaf first, ending at a trusted root). ``crl_signer``: the leaf is a CA that signs CRLs."""
    if not 2 <= len(ders) <= 4:
        raise VerificationError(
            f"{name}: {len(ders)} certificates, expected 2 to 4 ending at a root", check=check
        )
    certs = tuple(_load_cert(d, f"{name}[{i}]", check) for i, d in enumerate(ders))
    root = roots.kind(ders[-1])
    if root is None:
        digest = hashlib.sha256(ders[-1]).hexdigest()
        raise VerificationError(
            f"{name}: chain ends at {_cn(certs[-1].subject)!r} (sha256 {digest}), not a trusted root",
            check=check,
        )
    try:
        for i, cert in enumerate(certs[:-1]):
            what = f"{name}[{i}] {_cn(cert.subject)!r}"
            issuer = certs[i + 1]
            _check_cert_profile(cert, what, check)
            bc = _basic_constraints(issuer)
            if bc is None or not bc.ca:
                raise VerificationError(f"{name}: issuer {_cn(issuer.subject)!r} is not a CA", check=check)
            # Certificates below the issuer, excluding the leaf, are intermediates it has certified.
            if bc.path_length is not None and i > bc.path_length:
                raise VerificationError(
                    f"{name}: path length {i} exceeds {_cn(issuer.subject)!r}'s limit {bc.path_length}",
                    check=check,
                )
            try:
                ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                ku = None
            if ku is None or not ku.key_cert_sign:
                raise VerificationError(
                    f"{name}: issuer {_cn(issuer.subject)!r} may not sign certificates", check=check
                )
            try:
                cert.verify_directly_issued_by(issuer)
            except (*X509_DECODE_ERRORS, InvalidSignature) as exc:
                raise VerificationError(
                    f"{what} is not validly signed by {_cn(issuer.subject)!r} ({type(exc).__name__}: {exc})",
                    check=check,
                ) from None
        leaf_bc = _basic_constraints(certs[0])
        if crl_signer:
            try:
                leaf_ku = certs[0].extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                leaf_ku = None
            if leaf_bc is None or not leaf_bc.ca or leaf_ku is None or not leaf_ku.crl_sign:
                raise VerificationError(f"{name}: {_cn(certs[0].subject)!r} may not sign CRLs", check=check)
        elif leaf_bc is not None and leaf_bc.ca:
            raise VerificationError(
                f"{name}: leaf {_cn(certs[0].subject)!r} is a CA certificate", check=check
            )
    except X509_DECODE_ERRORS as exc:  # defensive: _load_cert decoded every field already
        raise VerificationError(f"{name}: malformed certificate extension ({exc})", check=check) from None
    windows = tuple(
        (f"{name} certificate {_cn(c.subject)!r}", c.not_valid_before_utc, c.not_valid_after_utc)
        for c in certs
    )
    return _Chain(certs=certs, root=root, root_der=ders[-1], windows=windows)


@lru_cache(maxsize=512)
def _verify_chain(
    ders: tuple[bytes, ...], roots: _Roots, name: str, check: str, crl_signer: bool = False
) -> _Chain:
    return _verify_chain_uncached(ders, roots, name, check, crl_signer)


@dataclass(frozen=True, slots=True)
class _PckChain:
    chain: _Chain
    leaf_key: ec.EllipticCurvePublicKey
    leaf_serial: int
    leaf_issuer: x509.Name
    leaf_issuer_der: bytes
    intermediate_spki: bytes
    intermediate_serials: frozenset[int]
    ext: PckExtensions
    ca: PckCa


@lru_cache(maxsize=1024)
def _pck_chain(pem: bytes, roots: _Roots) -> _PckChain:
    ders = split_pem_chain(pem, field="pck_cert_chain")
    chain = _verify_chain(ders, roots, "PCK chain", "pck_chain")
    leaf = chain.certs[0]
    if "SGX PCK Certificate" not in _cn(leaf.subject):
        raise VerificationError(
            f"PCK leaf CN {_cn(leaf.subject)!r} lacks 'SGX PCK Certificate'", check="pck_chain"
        )
    if len(chain.certs) != 3:
        raise VerificationError(
            f"PCK chain has {len(chain.certs)} certificates, expected leaf, PCK CA, root", check="pck_chain"
        )
    ca = ca_type_from_name(leaf.issuer)
    if ca is None:
        raise VerificationError(
            f"PCK issuer {_cn(leaf.issuer)!r} is neither a PCK Processor CA nor a PCK Platform CA",
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
        intermediate_spki=_spki(chain.certs[1]),
        intermediate_serials=frozenset(c.serial_number for c in chain.certs[1:-1]),
        ext=parse_pck_extensions(leaf),
        ca=ca,
    )


# --- collateral --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _VerifiedCollateral:
    root: RootKind
    root_der: bytes
    windows: tuple[_Window, ...]
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
        raise VerificationError(f"{_cn(cert.subject)!r} has no EC public key", check="collateral_chains")
    return key


def _raw_sig(sig: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def _verify_json_signature(chain: _Chain, text: str, signature: bytes, what: str, check: str) -> None:
    key = chain.certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(_raw_sig(signature), text.encode("utf-8"), _ECDSA_SHA256)
    except InvalidSignature:
        raise VerificationError(
            f"{what} signature does not verify under {_cn(chain.certs[0].subject)!r}", check=check
        ) from None


def _crl_window(crl: x509.CertificateRevocationList, what: str, check: str) -> _Window:
    next_update = crl.next_update_utc
    if next_update is None:
        raise VerificationError(f"{what} has no nextUpdate", check=check)
    return (what, crl.last_update_utc, next_update)


def _collateral_chain(
    certs: tuple[x509.Certificate, ...], roots: _Roots, name: str, crl_signer: bool = False
) -> _Chain:
    ders = tuple(c.public_bytes(Encoding.DER) for c in certs)
    return _verify_chain(ders, roots, name, "collateral_chains", crl_signer)


def _check_signer(chain: _Chain, name: str, *, tcb_signing: bool) -> None:
    """Collateral signers: the TCB Signing certificate (TCB Info, QE Identity) or a PCK CA (PCK CRL),
    issued directly by the root. A PCK certificate chains to the same root and must not qualify."""
    signer = chain.certs[0]
    cn = _cn(signer.subject)
    if len(chain.certs) != 2:
        raise VerificationError(
            f"{name}: {len(chain.certs)} certificates, expected the signer and the root",
            check="collateral_chains",
        )
    if tcb_signing:
        if "SGX TCB Signing" not in cn:
            raise VerificationError(
                f"{name}: signer {cn!r} is not a TCB Signing certificate", check="collateral_chains"
            )
        try:
            signer.extensions.get_extension_for_oid(SGX_EXTENSIONS_OID)
        except x509.ExtensionNotFound:
            return
        raise VerificationError(f"{name}: signer {cn!r} is a PCK certificate", check="collateral_chains")
    if ca_type_from_name(signer.subject) is None:
        raise VerificationError(f"{name}: signer {cn!r} is not a PCK CA", check="collateral_chains")


@lru_cache(maxsize=256)
def _verify_collateral(collateral: QuoteCollateral, roots: _Roots) -> _VerifiedCollateral:
    tcb_chain = _collateral_chain(collateral.tcb_info_chain, roots, "TCB Info issuer chain")
    qe_chain = _collateral_chain(collateral.qe_identity_chain, roots, "QE Identity issuer chain")
    crl_chain = _collateral_chain(collateral.pck_crl_chain, roots, "PCK CRL issuer chain", crl_signer=True)
    _check_signer(tcb_chain, "TCB Info issuer chain", tcb_signing=True)
    _check_signer(qe_chain, "QE Identity issuer chain", tcb_signing=True)
    _check_signer(crl_chain, "PCK CRL issuer chain", tcb_signing=False)
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
            f"root CA CRL (issuer {_cn(root_crl.issuer)!r}) is not signed by {_cn(root_cert.subject)!r}",
            check="root_ca_crl",
        )
    root_revoked = frozenset(r.serial_number for r in root_crl)
    for chain in (tcb_chain, qe_chain, crl_chain):
        for cert in chain.certs[:-1]:
            if cert.serial_number in root_revoked:
                raise VerificationError(
                    f"{_cn(cert.subject)!r} (serial {cert.serial_number:x}) is revoked by the root CA CRL",
                    check="root_ca_crl",
                )

    pck_crl = collateral.pck_crl_parsed
    signer = crl_chain.certs[0]
    if pck_crl.issuer != signer.subject or not crl_signed_by(pck_crl, _ec_key(signer)):
        raise VerificationError(
            f"PCK CRL (issuer {_cn(pck_crl.issuer)!r}) is not signed by {_cn(signer.subject)!r}",
            check="pck_crl",
        )
    tcb_info = collateral.parsed_tcb_info
    qe_identity = collateral.parsed_qe_identity
    windows = (
        *tcb_chain.windows,
        *qe_chain.windows,
        *crl_chain.windows,
        _crl_window(root_crl, "root CA CRL", "root_ca_crl"),
        _crl_window(pck_crl, f"PCK CRL ({_cn(pck_crl.issuer)})", "pck_crl"),
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
        pck_crl_signer_spki=_spki(signer),
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


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_windows(windows: Sequence[_Window], at: datetime) -> datetime:
    expiry = None
    for what, not_before, not_after in windows:
        if at < not_before:
            raise VerificationError(
                f"{what} is not valid before {_fmt(not_before)}; verification time is {_fmt(at)}",
                check="validity_window",
            )
        if at > not_after:
            raise VerificationError(
                f"{what} expired at {_fmt(not_after)}; verification time is {_fmt(at)}",
                check="validity_window",
            )
        if expiry is None or not_after < expiry:
            expiry = not_after
    assert expiry is not None
    return expiry


def verify_quote(
    raw: bytes,
    collateral: QuoteCollateral,
    *,
    at: datetime,
    dev_roots: Sequence[x509.Certificate] = (),
) -> VerifiedQuote:
    """Verify ``raw`` (an SGX v3 or TDX v4/v5 quote) with ``collateral`` at time ``at``.

    The Intel SGX Root CA is always trusted; ``dev_roots`` are additional, explicitly configured
    roots (the dev TEE simulator). Raises ``EvidenceParseError`` (malformed quote) or
    ``VerificationError`` naming the failed check.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")
    checks: list[str] = []
    unverified_quote = parse_quote(raw)
    checks.append("parse")
    vendor = unverified_quote.header.qe_vendor_id
    if vendor != INTEL_QE_VENDOR_ID:
        raise VerificationError(
            f"QE vendor ID {vendor.hex()} is not Intel's {INTEL_QE_VENDOR_ID.hex()}", check="qe_vendor_id"
        )
    checks.append("qe_vendor_id")
    roots = _roots(dev_roots)
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
            f"PCK CRL is issued by {_cn(coll.pck_crl_issuer)!r}, the PCK certificate by {_cn(pck.leaf_issuer)!r}",
            check="pck_crl",
        )
    if pck.leaf_serial in coll.pck_revoked:
        raise VerificationError(
            f"PCK certificate serial {pck.leaf_serial:x} is revoked by the PCK CRL", check="pck_crl"
        )
    checks.append("pck_crl")

    expiry = min(_check_windows(pck.chain.windows, at), _check_windows(coll.windows, at))
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
    pem = unverified_quote.signature.pck_chain_pem
    if pem is None:
        raise CollateralError(
            f"quote carries no PCK certificate chain (certification data type "
            f"{unverified_quote.signature.certification.cert_type}); cannot pick collateral from it"
        )
    fmspc, ca = _unverified_fmspc_and_ca(pem)
    return fmspc, ca, unverified_quote.tee


@lru_cache(maxsize=1024)
def _unverified_fmspc_and_ca(pem: bytes) -> tuple[str, str]:
    """FMSPC and PCK CA from an **unverified** PCK chain (cached by its bytes: a platform's chain
    repeats in every quote it makes, and the extension parse costs more than the quote check)."""
    ders = split_pem_chain(pem)
    leaf = _load_cert(ders[0], "PCK chain[0]", "pck_chain")
    ca = ca_type_from_name(leaf.issuer)
    if ca is None:
        raise VerificationError(
            f"PCK issuer {_cn(leaf.issuer)!r} is neither a PCK Processor CA nor a PCK Platform CA",
            check="pck_chain",
        )
    return parse_pck_extensions(leaf).fmspc.hex().upper(), ca
