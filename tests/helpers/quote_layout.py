"""Where each part of a DCAP quote lies, and what (if anything) authenticates it, for mutation tests.

Authentication of a quote, from the inside out:

* ``attestation key``: the quote signature covers the header and the body (v5: and the body
  descriptor);
* ``QE report data``: the QE report data is SHA-256(attestation key || QE auth data), so the
  attestation key and the QE auth data are bound to the QE report;
* ``PCK key``: the QE report is signed by the PCK key;
* ``signature``: the bytes of an ECDSA signature (changing them invalidates it);
* ``structure``: lengths and type fields; a change moves or reinterprets what follows, which the
  parser or the checks above then refuse;
* ``PCK chain``: PEM text. The certificates' DER is signed by the issuing CA, the root is compared
  byte for byte with a trusted root; the PEM framing (line breaks, the NUL terminator) and the
  unused bits of a block's last base64 character are not authenticated by anything, but a change
  there either decodes to the same DER (same verdict) or is refused;
* ``padding``: zero bytes after the quote (configfs pads quotes); only zeros are accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from keybroker.errors import EvidenceParseError
from keybroker.tee.dcap.abi import CERT_DATA_HEADER_SIZE, ENCLAVE_REPORT_SIZE, HEADER_SIZE, parse_quote
from keybroker.tee.dcap.pck import X509_DECODE_ERRORS, split_pem_chain

Cover = Literal[
    "attestation key", "QE report data", "PCK key", "signature", "structure", "PCK chain", "padding"
]


@dataclass(frozen=True)
class Region:
    name: str
    start: int
    end: int
    cover: Cover


def regions(quote: bytes) -> list[Region]:
    """The quote's byte ranges, in order, covering every byte of ``quote``."""
    q = parse_quote(quote)
    body_end = len(q.signed_data)
    sig_start = body_end + 4
    out = [Region("header", 0, HEADER_SIZE, "attestation key")]
    if q.header.version == 5:
        out.append(Region("body descriptor", HEADER_SIZE, HEADER_SIZE + 6, "attestation key"))
        out.append(Region("body", HEADER_SIZE + 6, body_end, "attestation key"))
    else:
        out.append(Region("body", HEADER_SIZE, body_end, "attestation key"))
    out += [
        Region("signature data size", body_end, sig_start, "structure"),
        Region("quote signature", sig_start, sig_start + 64, "signature"),
        Region("attestation key", sig_start + 64, sig_start + 128, "QE report data"),
    ]
    qe_start = sig_start + 128
    if q.header.version >= 4:
        out.append(Region("certification data type 6 header", qe_start, qe_start + 6, "structure"))
        qe_start += CERT_DATA_HEADER_SIZE
    qe_sig = qe_start + ENCLAVE_REPORT_SIZE
    auth = qe_sig + 64
    auth_end = auth + 2 + len(q.signature.qe_auth_data)
    cert = q.signature.certification
    out += [
        Region("QE report", qe_start, qe_sig, "PCK key"),
        Region("QE report signature", qe_sig, auth, "signature"),
        Region("QE auth data size", auth, auth + 2, "structure"),
        Region("QE auth data", auth + 2, auth_end, "QE report data"),
        Region("certification data header", auth_end, cert.offset, "structure"),
        Region("PCK chain", cert.offset, cert.offset + len(cert.data), "PCK chain"),
    ]
    assert auth_end + CERT_DATA_HEADER_SIZE == cert.offset
    end = len(quote) - q.trailing_size
    assert cert.offset + len(cert.data) == end
    if q.trailing_size:
        out.append(Region("padding", end, len(quote), "padding"))
    return out


def pem_blocks(quote: bytes) -> list[tuple[int, int]]:
    """Absolute byte ranges of the base64 bodies of the PCK chain's PEM blocks."""
    cert = parse_quote(quote).signature.certification
    return [
        (cert.offset + m.start(1), cert.offset + m.end(1))
        for m in re.finditer(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", cert.data, re.S)
    ]


def chain_ders(quote: bytes) -> tuple[bytes, ...]:
    pem = parse_quote(quote).signature.pck_chain_pem
    assert pem is not None
    return split_pem_chain(pem)


def one_char_undecodable_leaf(quote: bytes) -> bytes:
    """The quote with one base64 character of its PCK leaf changed so that the leaf still loads
    but its issuer name does not decode (cryptography reports that only when the issuer is read)."""
    start, end = pem_blocks(quote)[0]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    leaf_der = chain_ders(quote)[0]
    issuer = x509.load_der_x509_certificate(leaf_der).issuer.public_bytes()
    first = leaf_der.index(issuer)  # the issuer precedes the subject in the TBS certificate
    chars = [pos for pos in range(start, end) if quote[pos] in alphabet]  # base64 char i -> byte
    for pos in chars[4 * (first // 3) : 4 * ((first + len(issuer)) // 3 + 1)]:
        for ch in alphabet:
            if ch == quote[pos]:
                continue
            mutated = quote[:pos] + bytes([ch]) + quote[pos + 1 :]
            try:
                leaf = x509.load_der_x509_certificate(chain_ders(mutated)[0])
            except (*X509_DECODE_ERRORS, EvidenceParseError):
                continue
            try:
                _ = leaf.issuer
            except ValueError:
                return mutated
    raise AssertionError("no one-character change makes the leaf's issuer undecodable")
