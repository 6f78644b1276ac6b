"""A minimal DER encoder for the few ASN.1 types the SGX PCK extension uses.

``cryptography`` can attach an arbitrary extension value but has no generic encoder, so
the value of OID 1.2.840.113741.1.13.1 is built here (X.690 definite-length DER).
"""

from __future__ import annotations

_TAG_BOOLEAN = 0x01
_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_ENUMERATED = 0x0A
_TAG_SEQUENCE = 0x30


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"invalid OID {dotted!r}")
    body = _base128(40 * arcs[0] + arcs[1]) + b"".join(_base128(a) for a in arcs[2:])
    return _tlv(_TAG_OID, body)


def _twos_complement(value: int) -> bytes:
    length = value.bit_length() // 8 + 1
    return value.to_bytes(length, "big", signed=True)


def integer(value: int) -> bytes:
    return _tlv(_TAG_INTEGER, _twos_complement(value))


def enumerated(value: int) -> bytes:
    return _tlv(_TAG_ENUMERATED, _twos_complement(value))


def boolean(value: bool) -> bytes:
    return _tlv(_TAG_BOOLEAN, b"\xff" if value else b"\x00")


def octet_string(value: bytes) -> bytes:
    return _tlv(_TAG_OCTET_STRING, value)


def sequence(*items: bytes) -> bytes:
    return _tlv(_TAG_SEQUENCE, b"".join(items))
