"""X.509 decoding every TEE verifier shares: certificates and CRLs decoded in full or refused, and
strict PEM chains. A certificate that loads may still fail where a field is first read
(cryptography decodes lazily); these functions read every field at once, so that each verifier
turns one exception into its own named failure.

Used by the DCAP (PCK chains, collateral), SEV-SNP (AMD's chains and CRLs) and TPM (EK and AK
certificates) packages; pure.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from keybroker.errors import EvidenceParseError, VerificationError

__all__ = [
    "X509_DECODE_ERRORS",
    "Window",
    "check_validity",
    "crl_signed_by",
    "decode_certificate",
    "decode_crl",
    "format_time",
    "pem_certificates_and_crls",
    "split_pem_chain",
]

#: What cryptography may raise while (lazily) decoding a malformed certificate or CRL.
X509_DECODE_ERRORS: Final = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)


def _whole_byte_signature(der: bytes, signature: bytes) -> None:
    """The signatureValue BIT STRING, which ends the DER, must say 0 unused bits.

    cryptography ignores that count (and the signature verifies whatever it says), so without
    this one certificate or CRL would have several DER encodings.
    """
    if not der.endswith(signature) or len(der) <= len(signature) or der[-len(signature) - 1] != 0:
        raise ValueError("the signatureValue BIT STRING does not hold whole bytes (unused bits != 0)")


def decode_certificate(der: bytes) -> x509.Certificate:
    """Load a DER certificate and decode every field now.

    cryptography parses names, extensions and keys lazily: a certificate that loads may still
    raise ``ValueError`` wherever one of them is first read (a leaf's issuer, say). Reading them
    all here moves every decoding failure to this one call, which raises one of
    :data:`X509_DECODE_ERRORS`; callers turn that into their own named error.
    """
    cert = x509.load_der_x509_certificate(der)
    _whole_byte_signature(der, cert.signature)
    _ = (cert.version, cert.serial_number, cert.signature_algorithm_oid, cert.signature)
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.public_key(), cert.tbs_certificate_bytes)
    for name in (cert.subject, cert.issuer):
        name.rfc4514_string()
    for ext in cert.extensions:
        _ = ext.value
    return cert


def crl_signed_by(crl: x509.CertificateRevocationList, key: CertificateIssuerPublicKeyTypes) -> bool:
    """Whether ``crl``'s signature verifies under ``key``; an unusable signature is simply not valid."""
    try:
        return crl.is_signature_valid(key)
    except X509_DECODE_ERRORS:
        return False


def decode_crl(der: bytes) -> x509.CertificateRevocationList:
    """Load a DER CRL and decode every field now (see :func:`decode_certificate`)."""
    crl = x509.load_der_x509_crl(der)
    _whole_byte_signature(der, crl.signature)
    _ = (crl.signature_algorithm_oid, crl.signature, crl.tbs_certlist_bytes)
    _ = (crl.last_update_utc, crl.next_update_utc, crl.issuer.rfc4514_string())
    for ext in crl.extensions:
        _ = ext.value
    for entry in crl:
        _ = (entry.serial_number, entry.revocation_date_utc)
        for entry_ext in entry.extensions:
            _ = entry_ext.value
    return crl


_PEM_BLOCK: Final = re.compile(rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\r\n]*?)-----END CERTIFICATE-----")
_FILLER: Final = re.compile(rb"[\r\n\x00]*")


def split_pem_chain(pem: bytes, *, field: str = "pck_cert_chain") -> tuple[bytes, ...]:
    """Split concatenated PEM certificates into DER, strictly.

    Only line breaks and NUL (the QE terminates the chain with one) may appear between and
    after the blocks, and only line breaks inside them; each block must be valid, canonical
    base64 (the unused bits of its last character zero).
    """
    ders: list[bytes] = []
    pos = 0
    for match in _PEM_BLOCK.finditer(pem):
        if not _FILLER.fullmatch(pem, pos, match.start()):
            raise EvidenceParseError(
                f"{field}: unexpected bytes before a certificate", field=field, offset=pos
            )
        body = match.group(1).replace(b"\r", b"").replace(b"\n", b"")
        try:
            der = base64.b64decode(body, validate=True)
        except binascii.Error:
            raise EvidenceParseError(f"{field}: bad base64 in certificate {len(ders)}", field=field) from None
        if base64.b64encode(der) != body:  # non-zero pad bits: another text for the same DER
            raise EvidenceParseError(f"{field}: non-canonical base64 in certificate {len(ders)}", field=field)
        ders.append(der)
        pos = match.end()
    if not _FILLER.fullmatch(pem, pos, len(pem)):
        raise EvidenceParseError(f"{field}: unexpected bytes after the certificates", field=field, offset=pos)
    if not ders:
        raise EvidenceParseError(f"{field}: no PEM certificate found", field=field)
    return tuple(ders)


_ANY_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


def pem_certificates_and_crls(data: bytes) -> tuple[list[str], list[str]]:
    """The CERTIFICATE and X509 CRL blocks of a PEM text, each block's text in order (not decoded:
    the verifier that takes them decodes them). ``ValueError`` saying what else is there: text
    outside the blocks, or a block of another kind (a private key pasted by mistake)."""
    blocks = list(_ANY_PEM_BLOCK.finditer(data))
    if not blocks or _ANY_PEM_BLOCK.sub(b"", data).strip():
        raise ValueError("not a sequence of PEM blocks")
    certificates: list[str] = []
    crls: list[str] = []
    for block in blocks:
        label = block.group(1)
        if label == b"CERTIFICATE":
            certificates.append(block.group(0).decode("ascii"))
        elif label == b"X509 CRL":
            crls.append(block.group(0).decode("ascii"))
        else:
            raise ValueError(f"a PEM {label.decode()} block is neither a certificate nor a CRL")
    return certificates, crls


#: (what, not before, not after) of a certificate or CRL, for :func:`check_validity`.
Window = tuple[str, datetime, datetime]


def format_time(t: datetime) -> str:
    """A time in messages: RFC 3339, seconds, UTC."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_validity(windows: Sequence[Window], at: datetime, *, check: str = "validity_window") -> datetime:
    """Every window contains ``at`` (bounds inclusive), else ``VerificationError(check=check)`` naming
    the first that does not. Returns the earliest end: when this verification stops being repeatable."""
    expiry: datetime | None = None
    for what, not_before, not_after in windows:
        if at < not_before:
            raise VerificationError(
                f"{what} is not valid before {format_time(not_before)}; verification time is {format_time(at)}",
                check=check,
            )
        if at > not_after:
            raise VerificationError(
                f"{what} expired at {format_time(not_after)}; verification time is {format_time(at)}",
                check=check,
            )
        if expiry is None or not_after < expiry:
            expiry = not_after
    if expiry is None:
        raise ValueError("no validity window to check")
    return expiry
