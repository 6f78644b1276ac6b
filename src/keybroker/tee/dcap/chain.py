"""The one verifier of Intel's certificate chains and CRLs (DCAP), for quotes and for the collateral cache.

Every chain is leaf first and ends at a trusted root: the pinned Intel SGX Root CA, or a dev root
configured explicitly (the dev TEE simulator's). ``tee.dcap.verify`` verifies the PCK chain and the
collateral's issuer chains with it at every quote; ``keybroker.collateral`` verifies each piece
with it before the piece is stored, so the cache never holds what a quote verification would
refuse for its chain. Each certificate is decoded in full or refused; signatures are
ECDSA P-256 / SHA-256; issuers are CAs allowed to sign certificates, within their path length; no
unknown critical extension; collateral signers are issued by the root directly and have the role
their piece needs (:func:`check_signer`).

Work is cached by content (the DER bytes and the roots): a platform's chain repeats in every quote.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from keybroker.errors import VerificationError
from keybroker.tee.dcap.pck import (
    SGX_EXTENSIONS_OID,
    X509_DECODE_ERRORS,
    ca_type_from_name,
    decode_certificate,
)
from keybroker.tee.x509 import Window

__all__ = [
    "INTEL_SGX_ROOT_CA",
    "Chain",
    "RootKind",
    "TrustedRoots",
    "Window",
    "check_signer",
    "cn",
    "load_certificate",
    "spki",
    "verify_chain",
]


def _load_intel_root() -> x509.Certificate:
    pem = resources.files("keybroker.tee.dcap").joinpath("roots/intel_sgx_root_ca.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


#: The pinned Intel SGX Root CA (SHA-256 44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3).
INTEL_SGX_ROOT_CA: Final = _load_intel_root()
_INTEL_ROOT_DER: Final = INTEL_SGX_ROOT_CA.public_bytes(Encoding.DER)
_INTEL_ROOT_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
if hashlib.sha256(_INTEL_ROOT_DER).hexdigest() != _INTEL_ROOT_SHA256:  # pragma: no cover - packaging error
    raise RuntimeError("shipped Intel SGX Root CA does not have the pinned fingerprint")

_KNOWN_CRITICAL: Final = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})

RootKind = Literal["intel", "dev"]


class TrustedRoots:
    """The pinned Intel SGX Root CA plus explicitly configured dev roots (the TEE simulator's):
    the one set of roots that quotes and the collateral cache's pieces are verified against.
    Equal and hashable by the roots' DER, so that chain verifications are cached per set."""

    __slots__ = ("_certs", "ders")

    def __init__(self, dev_roots: Iterable[x509.Certificate] = ()) -> None:
        certs: dict[bytes, x509.Certificate] = {_INTEL_ROOT_DER: INTEL_SGX_ROOT_CA}
        for cert in dev_roots:
            certs.setdefault(cert.public_bytes(Encoding.DER), cert)
        self._certs = certs
        #: Intel's root first, then the dev roots, each once.
        self.ders: tuple[bytes, ...] = tuple(certs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrustedRoots) and other.ders == self.ders

    def __hash__(self) -> int:
        return hash(self.ders)

    def __repr__(self) -> str:
        return f"TrustedRoots({self.describe()})"

    def kind(self, der: bytes) -> RootKind | None:
        if der == _INTEL_ROOT_DER:
            return "intel"
        return "dev" if der in self._certs else None

    def certificates(self) -> tuple[x509.Certificate, ...]:
        return tuple(self._certs.values())

    def describe(self) -> str:
        dev = len(self.ders) - 1
        return "the Intel SGX Root CA" + (f" or one of {dev} configured dev root(s)" if dev else "")


@dataclass(frozen=True, slots=True)
class Chain:
    certs: tuple[x509.Certificate, ...]
    root: RootKind
    #: The root certificate's DER: chains of one verification must all end at this same root.
    root_der: bytes
    windows: tuple[Window, ...]


def cn(name: x509.Name) -> str:
    """The name's CN (else its RFC 4514 form), for messages; names were decoded on load."""
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        value = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    return value


def load_certificate(der: bytes, what: str, check: str) -> x509.Certificate:
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


def _verify_uncached(
    ders: tuple[bytes, ...], roots: TrustedRoots, name: str, check: str, crl_signer: bool
) -> Chain:
    """Verify ``ders`` (leaf first, ending at a trusted root). ``crl_signer``: the leaf is a CA that signs CRLs."""
    if not 2 <= len(ders) <= 4:
        raise VerificationError(
            f"{name}: {len(ders)} certificates, expected 2 to 4 ending at a root", check=check
        )
    certs = tuple(load_certificate(d, f"{name}[{i}]", check) for i, d in enumerate(ders))
    root = roots.kind(ders[-1])
    if root is None:
        digest = hashlib.sha256(ders[-1]).hexdigest()
        raise VerificationError(
            f"{name}: chain ends at {cn(certs[-1].subject)!r} (sha256 {digest}), not a trusted root",
            check=check,
        )
    try:
        for i, cert in enumerate(certs[:-1]):
            what = f"{name}[{i}] {cn(cert.subject)!r}"
            issuer = certs[i + 1]
            _check_cert_profile(cert, what, check)
            bc = _basic_constraints(issuer)
            if bc is None or not bc.ca:
                raise VerificationError(f"{name}: issuer {cn(issuer.subject)!r} is not a CA", check=check)
            # Certificates below the issuer, excluding the leaf, are intermediates it has certified.
            if bc.path_length is not None and i > bc.path_length:
                raise VerificationError(
                    f"{name}: path length {i} exceeds {cn(issuer.subject)!r}'s limit {bc.path_length}",
                    check=check,
                )
            try:
                ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                ku = None
            if ku is None or not ku.key_cert_sign:
                raise VerificationError(
                    f"{name}: issuer {cn(issuer.subject)!r} may not sign certificates", check=check
                )
            try:
                cert.verify_directly_issued_by(issuer)
            except (*X509_DECODE_ERRORS, InvalidSignature) as exc:
                raise VerificationError(
                    f"{what} is not validly signed by {cn(issuer.subject)!r} ({type(exc).__name__}: {exc})",
                    check=check,
                ) from None
        leaf_bc = _basic_constraints(certs[0])
        if crl_signer:
            try:
                leaf_ku = certs[0].extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                leaf_ku = None
            if leaf_bc is None or not leaf_bc.ca or leaf_ku is None or not leaf_ku.crl_sign:
                raise VerificationError(f"{name}: {cn(certs[0].subject)!r} may not sign CRLs", check=check)
        elif leaf_bc is not None and leaf_bc.ca:
            raise VerificationError(f"{name}: leaf {cn(certs[0].subject)!r} is a CA certificate", check=check)
    except X509_DECODE_ERRORS as exc:  # defensive: _load_cert decoded every field already
        raise VerificationError(f"{name}: malformed certificate extension ({exc})", check=check) from None
    windows = tuple(
        (f"{name} certificate {cn(c.subject)!r}", c.not_valid_before_utc, c.not_valid_after_utc)
        for c in certs
    )
    return Chain(certs=certs, root=root, root_der=ders[-1], windows=windows)


@lru_cache(maxsize=512)
def verify_chain(
    ders: tuple[bytes, ...], roots: TrustedRoots, name: str, check: str, crl_signer: bool = False
) -> Chain:
    return _verify_uncached(ders, roots, name, check, crl_signer)


def check_signer(certs: tuple[x509.Certificate, ...], name: str, *, tcb_signing: bool, check: str) -> None:
    """Collateral signers: the TCB Signing certificate (TCB Info, QE Identity) or a PCK CA (PCK CRL),
    issued directly by the root. A PCK certificate chains to the same root and must not qualify."""
    signer = certs[0]
    signer_cn = cn(signer.subject)
    if len(certs) != 2:
        raise VerificationError(
            f"{name}: {len(certs)} certificates, expected the signer and the root", check=check
        )
    if tcb_signing:
        if "SGX TCB Signing" not in signer_cn:
            raise VerificationError(
                f"{name}: signer {signer_cn!r} is not a TCB Signing certificate", check=check
            )
        try:
            signer.extensions.get_extension_for_oid(SGX_EXTENSIONS_OID)
        except x509.ExtensionNotFound:
            return
        raise VerificationError(f"{name}: signer {signer_cn!r} is a PCK certificate", check=check)
    if ca_type_from_name(signer.subject) is None:
        raise VerificationError(f"{name}: signer {signer_cn!r} is not a PCK CA", check=check)
