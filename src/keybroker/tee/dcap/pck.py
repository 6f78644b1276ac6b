"""PCK certificates: the SGX extensions and the certificate chain carried in a quote.

Source: Intel SGX PCK Certificate and Certificate Revocation List Profile, section 1.5
"Intel SGX PCK Certificate" / "SGX Extensions" (OID 1.2.840.113741.1.13.1). The extension value
is a SEQUENCE of (OID, value) pairs; cryptography hands us its DER bytes as an unrecognized
extension and a small strict DER reader (definite, minimal lengths; minimal INTEGERs) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from keybroker.errors import EvidenceParseError

# The X.509 decoding every TEE shares (``tee.x509``), re-exported where DCAP code has always found it.
from keybroker.tee.x509 import (
    X509_DECODE_ERRORS,
    crl_signed_by,
    decode_certificate,
    decode_crl,
    split_pem_chain,
)

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
