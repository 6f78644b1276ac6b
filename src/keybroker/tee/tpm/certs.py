"""TPM key certificates (AK and EK): a chain to configured roots, checked at an injected time.

The TCG EK Credential Profile lets a TPM certificate have an empty subject with a critical
subjectAltName (directoryName of TPM manufacturer, model and version), so a critical SAN is a
known extension here; any other unknown critical extension is refused. Chains are checked hop by
hop (``verify_directly_issued_by``), as for AMD's and Intel's: issuer name equal to the issuing
certificate's subject, signature under its key, the issuer a CA allowed to sign certificates within
its path length, and every certificate, the trust anchor included, valid at ``at``.
Nothing is fetched: the AIA URLs in the certificates are never followed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID, NameOID

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from keybroker.errors import VerificationError
from keybroker.tee.x509 import X509_DECODE_ERRORS, check_validity, decode_certificate

__all__ = ["CertChain", "load_certificate", "spki_der", "verify_certificate_chain"]

_KNOWN_CRITICAL: Final = frozenset(
    {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.SUBJECT_ALTERNATIVE_NAME}
)
#: Signature hashes accepted on certificates (no SHA-1, no MD5).
_HASHES: Final = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_MAX_DEPTH: Final = 5


@dataclass(frozen=True, slots=True)
class CertChain:
    """A verified chain, leaf first, ending at a configured root (``certs[-1]``)."""

    certs: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]

    @property
    def root_sha256(self) -> str:
        return hashlib.sha256(self.certs[-1].public_bytes(Encoding.DER)).hexdigest()


def spki_der(cert_or_key: x509.Certificate | CertificatePublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate's key or of a key."""
    key = cert_or_key.public_key() if isinstance(cert_or_key, x509.Certificate) else cert_or_key
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def name_of(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return repr(str(cns[0].value))
    text = cert.subject.rfc4514_string()
    return repr(text) if text else f"<empty subject, serial {cert.serial_number:x}>"


def load_certificate(data: bytes | x509.Certificate, what: str, check: str) -> x509.Certificate:
    """A certificate from DER or PEM bytes, every field decoded now; a failure is a named check."""
    if isinstance(data, x509.Certificate):
        data = data.public_bytes(Encoding.DER)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            data = x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        return decode_certificate(data)
    except X509_DECODE_ERRORS as exc:
        raise VerificationError(f"{what}: undecodable certificate ({exc})", check=check) from None


def _bc(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _ku(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _check_profile(cert: x509.Certificate, what: str, check: str, *, anchor: bool = False) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise VerificationError(
                f"{what}: unknown critical extension {ext.oid.dotted_string}", check=check
            )
    if anchor:  # a trust anchor's self-signature proves nothing and is not checked
        return
    algo = cert.signature_hash_algorithm
    if not isinstance(algo, _HASHES):
        name = algo.name if algo is not None else cert.signature_algorithm_oid.dotted_string
        raise VerificationError(f"{what}: signature hash {name} is not SHA-256/384/512", check=check)


def _check_window(cert: x509.Certificate, what: str, at: datetime, check: str) -> None:
    check_validity([(what, cert.not_valid_before_utc, cert.not_valid_after_utc)], at, check=check)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (*X509_DECODE_ERRORS, InvalidSignature):
        return False
    return True


def verify_certificate_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    at: datetime,
    what: str,
    check: str,
    leaf_key_usage: str | None = None,
) -> CertChain:
    """Verify ``leaf`` up to one of ``roots`` through ``intermediates`` (any order) at ``at``.

    ``leaf_key_usage``: a ``KeyUsage`` attribute the leaf must assert (``digital_signature`` for an
    AK, ``key_encipherment`` / ``key_agreement`` for an EK); None: not checked. Raises
    ``VerificationError(check=check)`` naming the certificate that fails.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")
    if not roots:
        raise VerificationError(f"{what}: no trusted root is configured", check=check)
    root_ders = {r.public_bytes(Encoding.DER) for r in roots}
    try:
        _check_profile(leaf, f"{what} {name_of(leaf)}", check)
        bc = _bc(leaf)
        if bc is not None and bc.ca:
            raise VerificationError(f"{what} {name_of(leaf)} is a CA certificate", check=check)
        if leaf_key_usage is not None:
            ku = _ku(leaf)
            if ku is None or not getattr(ku, leaf_key_usage):
                raise VerificationError(
                    f"{what} {name_of(leaf)} lacks key usage {leaf_key_usage}", check=check
                )
        chain = [leaf]
        while True:
            cert = chain[-1]
            if cert.public_bytes(Encoding.DER) in root_ders:
                break
            if len(chain) > _MAX_DEPTH:
                raise VerificationError(f"{what}: chain longer than {_MAX_DEPTH} certificates", check=check)
            candidates = [*roots, *intermediates]
            issuer = next((c for c in candidates if c is not cert and _issued_by(cert, c)), None)
            if issuer is None:
                raise VerificationError(
                    f"{what}: {name_of(cert)} is not issued by a configured root or intermediate "
                    f"(issuer {cert.issuer.rfc4514_string()!r})",
                    check=check,
                )
            if any(issuer.public_bytes(Encoding.DER) == c.public_bytes(Encoding.DER) for c in chain):
                raise VerificationError(f"{what}: the chain loops at {name_of(issuer)}", check=check)
            ibc = _bc(issuer)
            if ibc is None or not ibc.ca:
                raise VerificationError(f"{what}: issuer {name_of(issuer)} is not a CA", check=check)
            below = len(chain) - 1  # CA certificates between the issuer and the leaf
            if ibc.path_length is not None and below > ibc.path_length:
                raise VerificationError(
                    f"{what}: path length {below} exceeds {name_of(issuer)}'s limit {ibc.path_length}",
                    check=check,
                )
            iku = _ku(issuer)
            if iku is None or not iku.key_cert_sign:
                raise VerificationError(
                    f"{what}: issuer {name_of(issuer)} may not sign certificates", check=check
                )
            anchor = issuer.public_bytes(Encoding.DER) in root_ders
            _check_profile(issuer, f"{what} issuer {name_of(issuer)}", check, anchor=anchor)
            chain.append(issuer)
        for cert in chain:
            _check_window(cert, f"{what} certificate {name_of(cert)}", at, check)
    except X509_DECODE_ERRORS as exc:  # defensive: load_certificate decoded every field already
        raise VerificationError(f"{what}: malformed certificate ({exc})", check=check) from None
    return CertChain(tuple(chain))
