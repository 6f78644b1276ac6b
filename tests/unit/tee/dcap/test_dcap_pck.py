"""PCK certificate SGX extensions (OID 1.2.840.113741.1.13.1) and strict PEM chain splitting."""

from __future__ import annotations

import pytest
from cryptography import x509
from tests.vectors.corpus import read_bytes

from keybroker.errors import EvidenceParseError
from keybroker.tee.dcap.abi import parse_quote
from keybroker.tee.dcap.pck import (
    ca_type_from_name,
    parse_pck_extensions,
    parse_sgx_extensions_der,
    split_pem_chain,
)


def _chain(rel: str) -> list[x509.Certificate]:
    pem = parse_quote(read_bytes(rel)).signature.pck_chain_pem
    assert pem is not None
    return [x509.load_der_x509_certificate(d) for d in split_pem_chain(pem)]


def test_platform_ca_pck_certificate() -> None:
    leaf = _chain("azure-vtpm/coco-trustee/az-tdx-vtpm/td-quote.bin")[0]
    ext = parse_pck_extensions(leaf)
    assert ext.fmspc.hex() == "00806f050000"
    assert ext.pce_id == b"\x00\x00"
    assert ext.tcb_components == (6, 6, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.pcesvn == 11
    assert ext.cpusvn == bytes(ext.tcb_components)
    assert ext.sgx_type == 1
    assert len(ext.ppid) == 16
    assert ext.platform_instance_id is not None and len(ext.platform_instance_id) == 16
    assert ext.configuration is not None
    assert (
        ext.configuration.dynamic_platform,
        ext.configuration.cached_keys,
        ext.configuration.smt_enabled,
    ) == (
        True,
        False,
        True,
    )
    assert ca_type_from_name(leaf.issuer) == "platform"


def test_processor_ca_pck_certificate() -> None:
    leaf = _chain("intel-dcap/phala-dcap-qvl/sgx_quote")[0]
    ext = parse_pck_extensions(leaf)
    assert ext.fmspc.hex().upper() == "00A067110000"
    assert ext.platform_instance_id is None and ext.configuration is None
    assert ext.sgx_type == 0
    assert ca_type_from_name(leaf.issuer) == "processor"


def test_non_pck_certificate_has_no_sgx_extension() -> None:
    root = _chain("intel-dcap/phala-dcap-qvl/sgx_quote")[-1]
    assert ca_type_from_name(root.subject) is None
    with pytest.raises(EvidenceParseError, match="not present"):
        parse_pck_extensions(root)


# --- a tiny DER writer to build negative cases --------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = [40 * arcs[0] + arcs[1], *arcs[2:]]
    body = b""
    for arc in out:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, body)


SGX = "1.2.840.113741.1.13.1"


def _pair(oid: str, value: bytes) -> bytes:
    return _tlv(0x30, _oid(oid) + value)


def _int(v: int) -> bytes:
    return _tlv(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big"))


def _ext(*, fmspc: bytes = b"\x00\x90\x6e\xd5\x00\x00", extra: bytes = b"", tcb_extra: bytes = b"") -> bytes:
    comps = b"".join(_pair(f"{SGX}.2.{i}", _int(i)) for i in range(1, 17))
    tcb = (
        comps
        + _pair(f"{SGX}.2.17", _int(300))
        + _pair(f"{SGX}.2.18", _tlv(0x04, bytes(range(1, 17))))
        + tcb_extra
    )
    return _tlv(
        0x30,
        _pair(f"{SGX}.1", _tlv(0x04, bytes(16)))
        + _pair(f"{SGX}.2", _tlv(0x30, tcb))
        + _pair(f"{SGX}.3", _tlv(0x04, b"\x00\x00"))
        + _pair(f"{SGX}.4", _tlv(0x04, fmspc))
        + _pair(f"{SGX}.5", _tlv(0x0A, b"\x00"))
        + extra,
    )


def test_synthetic_extension_round_trip() -> None:
    ext = parse_sgx_extensions_der(_ext())
    assert ext.tcb_components == tuple(range(1, 17))
    assert ext.pcesvn == 300
    assert ext.cpusvn == bytes(range(1, 17))
    assert ext.fmspc.hex() == "00906ed50000"


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (_ext(fmspc=b"\x00" * 5), "FMSPC: expected 6 bytes"),
        (_ext(extra=_pair(f"{SGX}.4", _tlv(0x04, bytes(6)))), "duplicate"),
        (_ext(tcb_extra=_pair(f"{SGX}.2.1", _int(1))), "duplicate"),
        (_ext() + b"\x00", "exactly one SEQUENCE"),
        (_ext()[:-1], "runs past"),
        (b"\x30\x81\x05" + b"\x00" * 5, "non-minimal length"),
        (_tlv(0x30, _pair(f"{SGX}.1", _tlv(0x04, bytes(16)))), "TCB"),
        (_ext(extra=_pair(f"{SGX}.7", _tlv(0x30, _pair(f"{SGX}.7.1", _tlv(0x01, b"\x01"))))), "BOOLEAN"),
    ],
)
def test_malformed_extensions_are_rejected(der: bytes, message: str) -> None:
    with pytest.raises(EvidenceParseError, match=message):
        parse_sgx_extensions_der(der)


def test_integer_rules() -> None:
    comps = b"".join(_pair(f"{SGX}.2.{i}", _int(1)) for i in range(1, 16))
    bad_comp = _pair(f"{SGX}.2.16", _tlv(0x02, b"\x00\x01"))  # non-minimal
    tcb = comps + bad_comp + _pair(f"{SGX}.2.17", _int(1)) + _pair(f"{SGX}.2.18", _tlv(0x04, bytes(16)))
    der = _tlv(0x30, _pair(f"{SGX}.1", _tlv(0x04, bytes(16))) + _pair(f"{SGX}.2", _tlv(0x30, tcb)))
    with pytest.raises(EvidenceParseError, match="non-minimal INTEGER"):
        parse_sgx_extensions_der(der)
    negative = tcb.replace(bad_comp, _pair(f"{SGX}.2.16", _tlv(0x02, b"\xff")))
    der = _tlv(0x30, _pair(f"{SGX}.1", _tlv(0x04, bytes(16))) + _pair(f"{SGX}.2", _tlv(0x30, negative)))
    with pytest.raises(EvidenceParseError, match="negative INTEGER"):
        parse_sgx_extensions_der(der)


def test_split_pem_chain_is_strict() -> None:
    pem = parse_quote(read_bytes("intel-dcap/phala-dcap-qvl/sgx_quote")).signature.pck_chain_pem
    assert pem is not None
    ders = split_pem_chain(pem)
    assert len(ders) == 3
    assert split_pem_chain(pem + b"\x00\r\n") == ders
    with pytest.raises(EvidenceParseError):
        split_pem_chain(pem.replace(b"\n", b"\x0b", 2))  # only line breaks, no other whitespace
    with pytest.raises(EvidenceParseError, match="after the certificates"):
        split_pem_chain(pem + b"junk")
    with pytest.raises(EvidenceParseError, match="before a certificate"):
        split_pem_chain(b"junk" + pem)
    with pytest.raises(EvidenceParseError, match="no PEM certificate"):
        split_pem_chain(b"\n\x00")
    broken = pem.replace(b"MII", b"M=I", 1)
    with pytest.raises(EvidenceParseError, match="base64"):
        split_pem_chain(broken)
