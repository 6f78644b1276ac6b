"""PCK certificates: the SGX extensions and the certificate chain carried in a quote.

Source: Intel SGX PCK Certificate and Certificate Revocation List Profile, section 1.5
"Intel SGX PCK Certificate" / "SGX Extensions" (OID 1.2.840.113741.1.13.1). The extension value
is a SEQUENCE of (OID, value) pairs; cryptography hands us its DER bytes as an unrecognized
extension and a small strict DER reader (definite, minimal lengths; minimal INTEGERs) reads it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import NameOID

from keybroker.errors import EvidenceParseError

__all__ = [
    "SGX_EXTENSIONS_OID",
    "X509_DECODE_ERRORS",
    "PckCa",
    "PckExtensions",
    "PlatformConfiguration",
    "ca_type_from_name",
    "crl_signed_by",
    "decode_certificate",
    "decode_crl",
    "parse_pck_extensions",
    "parse_sgx_extensions_der",
    "split_pem_chain",
]

PckCa = Literal["processor", "platform"]

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


_SGX: Final = "1.2.840.113741.1.13.1"
SGX_EXTENSIONS_OID: Final = x509.ObjectIdentifier(_SGX)
# [PCK profile] Table "SGX Extensions".
OID_PPID: Final = _SGX + ".1"
OID_TCB: Final = _SGX + ".2"
OID_PCESVN: Final = OID_TCB + ".17"
OID_CPUSVN: Final = OID_TCB + ".18"
OID_PCEID: Final = _SGX + ".3"
OID_FMSPC: Final = _SGX + ".4"
OID_SGX_TYPE: Final = _SGX + ".5"
OID_PLATFORM_INSTANCE_ID: Final = _SGX + ".6"
OID_CONFIGURATION: Final = _SGX + ".7"
OID_DYNAMIC_PLATFORM: Final = OID_CONFIGURATION + ".1"
OID_CACHED_KEYS: Final = OID_CONFIGURATION + ".2"
OID_SMT_ENABLED: Final = OID_CONFIGURATION + ".3"

_TAG_BOOLEAN: Final = 0x01
_TAG_INTEGER: Final = 0x02
_TAG_OCTET_STRING: Final = 0x04
_TAG_OID: Final = 0x06
_TAG_ENUMERATED: Final = 0x0A
_TAG_SEQUENCE: Final = 0x30


def _fail(detail: str) -> EvidenceParseError:
    return EvidenceParseError(f"PCK SGX extension: {detail}", field="pck_certificate.sgx_extensions")


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``pos``: (tag, content, next position). Low tag numbers only."""
    if pos + 2 > len(data):
        raise _fail(f"truncated TLV at {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _fail(f"high tag number at {pos}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise _fail(f"bad length encoding at {pos - 1}")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise _fail(f"non-minimal length at {pos - 1}")
        pos += n
    end = pos + length
    if end > len(data):
        raise _fail(f"length {length} at {pos} runs past the end ({len(data)})")
    return tag, data[pos:end], end


def _children(content: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(content):
        tag, value, pos = _tlv(content, pos)
        out.append((tag, value))
    return out


def _oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise _fail("malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in content:
        if fresh and byte == 0x80:
            raise _fail("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _uint(content: bytes, what: str, maximum: int) -> int:
    if not content:
        raise _fail(f"{what}: empty INTEGER")
    if content[0] & 0x80:
        raise _fail(f"{what}: negative INTEGER")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise _fail(f"{what}: non-minimal INTEGER")
    value = int.from_bytes(content, "big")
    if value > maximum:
        raise _fail(f"{what}: {value} exceeds {maximum}")
    return value


def _pairs(content: bytes, where: str) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE { OID, value } as {oid: (tag, value)}; duplicates are rejected."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, item in _children(content):
        if tag != _TAG_SEQUENCE:
            raise _fail(f"{where}: expected SEQUENCE, found tag 0x{tag:02x}")
        parts = _children(item)
        if len(parts) != 2 or parts[0][0] != _TAG_OID:
            raise _fail(f"{where}: expected SEQUENCE {{ OID, value }}")
        oid = _oid(parts[0][1])
        if oid in out:
            raise _fail(f"{where}: duplicate {oid}")
        out[oid] = parts[1]
    return out


def _get(
    items: dict[str, tuple[int, bytes]], oid: str, tag: int, name: str, size: int | None = None
) -> bytes:
    if oid not in items:
        raise _fail(f"{name} ({oid}) is missing")
    found, value = items[oid]
    if found != tag:
        raise _fail(f"{name}: expected tag 0x{tag:02x}, found 0x{found:02x}")
    if size is not None and len(value) != size:
        raise _fail(f"{name}: expected {size} bytes, found {len(value)}")
    return value


def _bool(items: dict[str, tuple[int, bytes]], oid: str, name: str) -> bool | None:
    if oid not in items:
        return None
    value = _get(items, oid, _TAG_BOOLEAN, name, 1)
    if value not in (b"\x00", b"\xff"):
        raise _fail(f"{name}: BOOLEAN must be 0x00 or 0xff in DER")
    return value == b"\xff"


@dataclass(frozen=True, slots=True)
class PlatformConfiguration:
    """Configuration (OID .7), platform CA certificates only; ``None``: not stated."""

    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


@dataclass(frozen=True, slots=True)
class PckExtensions:
    """The SGX extensions of a PCK certificate."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    configuration: PlatformConfiguration | None


def parse_sgx_extensions_der(der: bytes) -> PckExtensions:
    """Parse the DER value of the SGX extensions (a SEQUENCE)."""
    tag, content, end = _tlv(der, 0)
    if tag != _TAG_SEQUENCE or end != len(der):
        raise _fail("value is not exactly one SEQUENCE")
    items = _pairs(content, "SGX extensions")
    tcb_items = _pairs(_get(items, OID_TCB, _TAG_SEQUENCE, "TCB"), "TCB")
    components = tuple(
        _uint(
            _get(tcb_items, f"{OID_TCB}.{i}", _TAG_INTEGER, f"SGX TCB comp{i:02d} SVN"), f"comp{i:02d}", 255
        )
        for i in range(1, 17)
    )
    platform_instance_id: bytes | None = None
    if OID_PLATFORM_INSTANCE_ID in items:
        platform_instance_id = _get(
            items, OID_PLATFORM_INSTANCE_ID, _TAG_OCTET_STRING, "PlatformInstanceID", 16
        )
    configuration: PlatformConfiguration | None = None
    if OID_CONFIGURATION in items:
        conf = _pairs(_get(items, OID_CONFIGURATION, _TAG_SEQUENCE, "Configuration"), "Configuration")
        configuration = PlatformConfiguration(
            dynamic_platform=_bool(conf, OID_DYNAMIC_PLATFORM, "DynamicPlatform"),
            cached_keys=_bool(conf, OID_CACHED_KEYS, "CachedKeys"),
            smt_enabled=_bool(conf, OID_SMT_ENABLED, "SMTEnabled"),
        )
    return PckExtensions(
        ppid=_get(items, OID_PPID, _TAG_OCTET_STRING, "PPID", 16),
        tcb_components=components,
        pcesvn=_uint(_get(tcb_items, OID_PCESVN, _TAG_INTEGER, "PCESVN"), "PCESVN", 0xFFFF),
        cpusvn=_get(tcb_items, OID_CPUSVN, _TAG_OCTET_STRING, "CPUSVN", 16),
        pce_id=_get(items, OID_PCEID, _TAG_OCTET_STRING, "PCE-ID", 2),
        fmspc=_get(items, OID_FMSPC, _TAG_OCTET_STRING, "FMSPC", 6),
        sgx_type=_uint(_get(items, OID_SGX_TYPE, _TAG_ENUMERATED, "SGX Type"), "SGX Type", 255),
        platform_instance_id=platform_instance_id,
        configuration=configuration,
    )


def parse_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """The SGX extensions of a PCK certificate (must be present exactly once)."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSIONS_OID)
    except x509.ExtensionNotFound:
        raise _fail("not present in the PCK certificate") from None
    except X509_DECODE_ERRORS as exc:
        raise _fail(f"certificate extensions are malformed: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise _fail("unexpected extension type")
    return parse_sgx_extensions_der(value.value)


def ca_type_from_name(name: x509.Name) -> PckCa | None:
    """``processor`` or ``platform`` from a PCK CA name (a leaf's issuer or a CRL's issuer).

    Intel's names are "Intel SGX PCK Processor CA" / "Intel SGX PCK Platform CA"; the dev PKI
    mirrors them, so the distinguishing words are matched.
    """
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        return None
    cn = str(cns[0].value)
    if "PCK Processor CA" in cn:
        return "processor"
    if "PCK Platform CA" in cn:
        return "platform"
    return None


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
