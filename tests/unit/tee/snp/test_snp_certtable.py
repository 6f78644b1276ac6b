"""The certificate table (extended report / configfs-tsm auxblob): layout, strictness, and use with verify."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.tee.snp.conftest import SIM_AT

from keybroker.errors import EvidenceParseError
from keybroker.tee.sim.snp import SnpDevPki, snp_report
from keybroker.tee.snp import verify_report
from keybroker.tee.snp.certtable import (
    GUID_ARK,
    GUID_ASK,
    GUID_CRL,
    GUID_VCEK,
    GUID_VLEK,
    MAX_CERT_TABLE_SIZE,
    build_cert_table,
    parse_cert_table,
)

UNKNOWN = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")


def test_guids_are_amds() -> None:
    # tee-facts.md §3 (go-sev-guest abi.go; virtee/sev host/types/snp.rs), RFC 4122 byte order.
    assert GUID_VCEK.bytes.hex() == "63da758de6644564adc5f4b93be8accd"
    assert str(GUID_VLEK) == "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
    assert str(GUID_ASK) == "4ab7b379-bbac-4fe4-a02f-05aef327c782"
    assert str(GUID_ARK) == "c0b406a4-a803-4952-9743-3fb6014cd0ae"
    assert str(GUID_CRL) == "92f81bc3-5811-4d3d-97ff-d19f88dc67ea"


def test_layout_round_trip() -> None:
    blob = build_cert_table([(GUID_VCEK, b"vcek"), (GUID_ASK, b"ask!"), (UNKNOWN, b"x"), (GUID_ARK, b"ark")])
    # Header: 4 entries + terminator, 24 bytes each; offsets from the table's start.
    assert len(blob) == 5 * 24 + 12
    assert blob[:16] == GUID_VCEK.bytes and struct.unpack_from("<II", blob, 16) == (120, 4)
    assert blob[96:120] == bytes(24)
    table = parse_cert_table(blob + bytes(4096))  # page padding after the certificates
    assert [e.name for e in table.entries] == ["vcek", "ask", None, "ark"]
    assert table.vcek == b"vcek" and table.ask == b"ask!" and table.ark == b"ark" and table.vlek is None
    assert table.get(UNKNOWN) == b"x" and table.crl is None
    assert table.signer("vcek") == b"vcek" and table.signer("vlek") is None  # never the other kind
    assert table.chain() == (b"ask!", b"ark")
    assert parse_cert_table(bytes(24)).entries == ()


def _entry(guid: uuid.UUID, offset: int, length: int) -> bytes:
    return guid.bytes + struct.pack("<II", offset, length)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "no all-zero terminator"),
        (bytes(23), "no all-zero terminator"),
        (_entry(GUID_VCEK, 48, 1) + b"x", "no all-zero terminator"),
        (bytes(16) + struct.pack("<II", 24, 1), "zero GUID but offset 24"),
        (_entry(GUID_VCEK, 48, 10) + bytes(24) + b"short", "are not between"),
        (_entry(GUID_VCEK, 24, 4) + bytes(24) + b"abcd", "are not between the table's end \\(48\\)"),
        (_entry(GUID_VCEK, 48, 0) + bytes(24), "is empty"),
        (_entry(GUID_VCEK, 72, 4) + _entry(GUID_VCEK, 76, 4) + bytes(24) + b"abcdefgh", "appears twice"),
        (
            _entry(GUID_VCEK, 72, 4) + _entry(GUID_ASK, 74, 4) + bytes(24) + b"abcdefgh",
            "entries 0 and 1 overlap",
        ),
        (_entry(GUID_VCEK, 0xFFFFFFFF, 0xFFFFFFFF) + bytes(24), "are not between"),
    ],
)
def test_malformed_tables_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(EvidenceParseError, match=message) as exc:
        parse_cert_table(blob)
    assert exc.value.field == "cert_table"


def test_size_limit_and_type() -> None:
    with pytest.raises(EvidenceParseError, match="limit"):
        parse_cert_table(bytes(MAX_CERT_TABLE_SIZE + 1))
    with pytest.raises(EvidenceParseError, match="must be bytes"):
        parse_cert_table("table")  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_parse_errors(data: bytes) -> None:
    try:
        table = parse_cert_table(data)
    except EvidenceParseError:
        return
    for entry in table.entries:
        assert entry.data and entry.offset >= 24 * (len(table.entries) + 1)


def test_the_simulators_table_verifies(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, now=SIM_AT)
    table = parse_cert_table(ev.cert_table)
    signer = table.signer("vcek")
    assert signer is not None and table.crl is not None  # the table carries the ARK's current CRL
    verified = verify_report(
        ev.report,
        vcek_or_vlek=signer,
        chain=table.chain(),
        crls=[table.crl],
        at=SIM_AT,
        dev_roots=[genoa_pki.root_cert],
    )
    assert verified.sim and verified.signing_key == "vcek"
    vlek = parse_cert_table(snp_report(genoa_pki, signing_key="vlek", now=SIM_AT).cert_table)
    assert vlek.vcek is None and vlek.vlek is not None
