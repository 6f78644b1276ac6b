"""Quote layout: exact lengths, offsets, reserved ranges, error field/offset reporting."""

from __future__ import annotations

import struct

import pytest
from tests.vectors.corpus import read_bytes

from keybroker.errors import EvidenceParseError
from keybroker.tee.dcap import abi
from keybroker.tee.dcap.abi import EnclaveReportBody, TdReportBody, parse_quote

SGX = "intel-dcap/phala-dcap-qvl/sgx_quote"
TDX_V4 = "intel-dcap/phala-dcap-qvl/tdx_quote"
TDX_V5 = "intel-dcap/phala-dcap-qvl/tdx_quote_outdated"
TDX_15EX = "intel-dcap/phala-dcap-qvl/tdx_quote_td15ex"
COS113 = "intel-dcap/google-go-tdx-guest/ccel/cos-113-tdx-quote.dat"


def test_layout_constants_match_the_specs() -> None:
    assert abi.HEADER_SIZE == 48
    assert abi.ENCLAVE_REPORT_SIZE == 384
    assert abi.TD10_SIZE == 584
    assert abi.TD15_SIZE == 648
    assert abi.TD15EX_SIZE == 885
    assert abi.RB_ATTRIBUTES_END - 16 == 48 and abi.RB_ISVFAMILYID_END == 320
    assert abi.TD_MRSIGNERSEAM_END == 112 and abi.TD_MRTD_END == 184 and abi.TD_RTMR3_END == 520
    assert abi.TDX_VMID_END == 649 and abi.TDX_TDID_END == 681


@pytest.mark.parametrize(
    ("rel", "version", "body_type", "size"),
    [
        (SGX, 3, abi.BODY_TYPE_SGX, 4600),
        (TDX_V4, 4, abi.BODY_TYPE_TD10, 5006),
        (TDX_V5, 5, abi.BODY_TYPE_TD15, 5006),
        (TDX_15EX, 5, abi.BODY_TYPE_TD15EX, 5247),
    ],
)
def test_corpus_quotes_parse(rel: str, version: int, body_type: int, size: int) -> None:
    raw = read_bytes(rel)
    assert len(raw) == size
    q = parse_quote(raw)
    assert q.header.version == version and q.body_type == body_type
    assert q.header.qe_vendor_id == abi.INTEL_QE_VENDOR_ID
    assert q.signature.certification.cert_type == abi.CERT_TYPE_PCK_CHAIN
    pem = q.signature.pck_chain_pem
    assert pem is not None and pem.count(b"BEGIN CERTIFICATE") == 3
    header_len = 54 if version == 5 else 48
    assert q.signed_data == raw[: header_len + {1: 384, 2: 584, 3: 648, 4: 885}[body_type]]
    if body_type == abi.BODY_TYPE_SGX:
        assert isinstance(q.body, EnclaveReportBody) and q.tee == "sgx"
    else:
        assert isinstance(q.body, TdReportBody) and q.tee == "tdx"
        assert (q.body.mr_service_td is None) == (body_type == abi.BODY_TYPE_TD10)
        assert (q.body.ext is None) == (body_type != abi.BODY_TYPE_TD15EX)
    assert len(q.signature.qe_auth_data) == 32


def test_field_offsets_on_a_known_quote() -> None:
    raw = read_bytes(TDX_V4)
    q = parse_quote(raw)
    assert isinstance(q.body, TdReportBody)
    assert q.body.mr_td == raw[48 + 136 : 48 + 184]
    assert q.body.report_data == raw[48 + 520 : 48 + 584]
    assert q.body.rtmr[3] == raw[48 + 472 : 48 + 520]
    sgx = parse_quote(read_bytes(SGX))
    assert isinstance(sgx.body, EnclaveReportBody)
    raw_sgx = read_bytes(SGX)
    assert sgx.body.mr_enclave == raw_sgx[48 + 64 : 48 + 96]
    assert sgx.body.isv_svn == struct.unpack_from("<H", raw_sgx, 48 + 258)[0]


def test_zero_padding_is_tolerated_and_counted() -> None:
    raw = read_bytes(COS113)
    q = parse_quote(raw)
    assert q.trailing_size == len(raw) - (632 + 4 + 4299)
    assert q.canonical == raw[: 632 + 4 + 4299] and not any(raw[len(q.canonical) :])
    assert parse_quote(q.canonical).trailing_size == 0
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(raw[:-1] + b"\x01")
    assert info.value.field == "trailing_bytes" and info.value.offset == len(raw) - 1


@pytest.mark.parametrize("cut", [0, 1, 47, 48, 400, 631, 632, 635, 636, 700, 1000, 2000, 4000, 4934])
def test_truncations_name_a_field(cut: int) -> None:
    raw = read_bytes(TDX_V4)[:cut]
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(raw)
    assert info.value.field is not None and info.value.offset is not None
    assert 0 <= info.value.offset <= 5006


def _set(raw: bytes, offset: int, data: bytes) -> bytes:
    return raw[:offset] + data + raw[offset + len(data) :]


@pytest.mark.parametrize(
    ("offset", "data", "field"),
    [
        (0, struct.pack("<H", 2), "header.version"),
        (2, struct.pack("<H", 3), "header.attestation_key_type"),
        (4, struct.pack("<I", 0x81), "header.tee_type"),  # v3 header: reserved
        (48 + 20, b"\x01", "body.reserved1"),
        (48 + 100, b"\x01", "body.reserved2"),
        (48 + 170, b"\x01", "body.reserved3"),
        (48 + 300, b"\x01", "body.reserved4"),
    ],
)
def test_sgx_header_and_reserved_ranges(offset: int, data: bytes, field: str) -> None:
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(_set(read_bytes(SGX), offset, data))
    assert info.value.field == field
    assert info.value.offset == offset


def test_qe_report_reserved_range_is_checked_with_its_absolute_offset() -> None:
    raw = read_bytes(SGX)
    qe_report_start = 48 + 384 + 4 + 128
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(_set(raw, qe_report_start + 25, b"\x07"))
    assert info.value.field == "qe_report.reserved1"
    assert info.value.offset == qe_report_start + 25


def test_v5_body_descriptor_is_checked() -> None:
    raw = read_bytes(TDX_V5)
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(_set(raw, 50, struct.pack("<I", 584)))
    assert info.value.field == "body_descriptor.size" and info.value.offset == 50
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(_set(raw, 48, struct.pack("<H", 9)))
    assert info.value.field == "body_descriptor.type"
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(_set(_set(raw, 48, struct.pack("<H", 1)), 50, struct.pack("<I", 384)))
    assert "does not fit" in str(info.value)


def test_signature_data_length_must_match_structure() -> None:
    raw = read_bytes(SGX)
    sig_len = struct.unpack_from("<I", raw, 432)[0]
    longer = _set(raw, 432, struct.pack("<I", sig_len - 1))
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(longer)
    assert info.value.field is not None


def test_v4_requires_certification_type_6() -> None:
    raw = read_bytes(TDX_V4)
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(_set(raw, 636 + 128, struct.pack("<H", 5)))
    assert info.value.field == "certification_data.type" and info.value.offset == 636 + 128


def test_nested_certification_data_must_fill_type_6() -> None:
    raw = read_bytes(TDX_V4)
    outer_size_at = 636 + 128 + 2
    outer = struct.unpack_from("<I", raw, outer_size_at)[0]
    sig_len = struct.unpack_from("<I", raw, 632)[0]
    # Grow the outer element by one byte (inside the signature data) so one byte is left unparsed.
    body = raw[: 636 + sig_len] + b"\x00"
    body = _set(body, outer_size_at, struct.pack("<I", outer + 1))
    body = _set(body, 632, struct.pack("<I", sig_len + 1))
    with pytest.raises(EvidenceParseError) as info:
        parse_quote(body)
    assert info.value.field == "qe_report_certification_data"


def test_oversized_input_is_refused() -> None:
    with pytest.raises(EvidenceParseError):
        parse_quote(read_bytes(SGX) + bytes(abi.MAX_QUOTE_SIZE))
