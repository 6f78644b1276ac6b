"""ATTESTATION_REPORT layout: exact length, versions, offsets, must-be-zero ranges, TCB layouts."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.vectors.corpus import read_bytes, read_text

from keybroker.errors import EvidenceParseError
from keybroker.tee.snp import abi
from keybroker.tee.snp.abi import Tcb, decode_tcb, parse_report, product_from_cpuid

V2_MILAN = "amd-sev-snp/coco-trustee/test-report.bin"  # VCEK, policy 0x3001f
V2_DEBUG = "amd-sev-snp/google-go-sev-guest/attestation.bin"  # policy 0xb0000: DEBUG
V3_VLEK = "amd-sev-snp/coco-trustee/test-vlek-report.bin"  # VLEK, VMPL 1, CPUID 19/01/01


def _raw(rel: str) -> bytes:
    return read_bytes(rel)


def _set(raw: bytes, offset: int, data: bytes) -> bytes:
    out = bytearray(raw)
    out[offset : offset + len(data)] = data
    return bytes(out)


def test_layout_constants_match_the_spec_table() -> None:
    assert abi.REPORT_SIZE == 0x4A0 == 1184
    assert abi.SIGNED_SIZE == 0x2A0
    assert abi.RESERVED_04C_END == 0x050 and abi.REPORT_DATA_END == 0x090
    assert abi.MEASUREMENT_END == 0x0C0 and abi.HOST_DATA_END == 0x0E0
    assert abi.ID_KEY_DIGEST_END == 0x110 and abi.AUTHOR_KEY_DIGEST_END == 0x140
    assert abi.REPORT_ID_MA_END == 0x180 and abi.CPUID_FAM_ID == 0x188 and abi.RESERVED_18B_START == 0x18B
    assert abi.RESERVED_18B_END == 0x1A0 and abi.CHIP_ID_END == 0x1E0
    assert abi.CURRENT_BUILD == 0x1E8 and abi.RESERVED_1EB == 0x1EB and abi.RESERVED_1EF == 0x1EF
    assert abi.LAUNCH_TCB_START == 0x1F0 and abi.CURRENT_MIT_VECTOR_END == 0x208
    assert abi.SIG_R_END == 0x2E8 and abi.SIG_S_END == 0x330


def test_corpus_reports_parse_with_their_fields() -> None:
    r = parse_report(_raw(V2_MILAN))
    assert r.version == 2 and r.cpuid is None and r.cpuid_product is None
    assert r.signing_key == "vcek" and not r.key_info.mask_chip_key and not r.key_info.author_key_en
    assert r.policy.value == 0x3001F and r.policy.abi_minor == 0x1F and r.policy.smt and not r.policy.debug
    assert r.vmpl == 0 and r.guest_svn == 4 and r.family_id == b"\x01" + bytes(15)
    assert r.current_version == r.committed_version == abi.FirmwareVersion(1, 52, 4)
    assert r.reported_tcb.hex() == "0300000000000873" and r.current_tcb.hex() == "03000000000008ce"
    assert r.chip_id.hex().startswith("c38427a30d4c7af9")
    assert r.report_id_ma == b"\xff" * 32
    assert r.launch_mit_vector is None and r.current_mit_vector is None
    assert r.signed_data == _raw(V2_MILAN)[:0x2A0]
    assert r.signature_r.bit_length() <= 384 and r.signature_s.bit_length() <= 384

    d = parse_report(_raw(V2_DEBUG))
    assert d.policy.debug and d.policy.to_dict()["debug"] is True

    v = parse_report(_raw(V3_VLEK))
    assert v.version == 3 and v.signing_key == "vlek" and v.vmpl == 1
    assert v.cpuid == abi.Cpuid(0x19, 0x01, 0x01) and v.cpuid_product == "Milan"
    assert v.chip_id == bytes(64)  # MASK_CHIP_ID
    assert v.platform_info.to_dict() == {
        "value": "0000000000000027",
        "smt_enabled": True,
        "tsme_enabled": True,
        "ecc_enabled": True,
        "rapl_disabled": False,
        "ciphertext_hiding_dram_enabled": False,
        "alias_check_complete": True,
        "sev_tio_enabled": False,
        "reserved": "0000000000000000",
    }
    hexed = parse_report(bytes.fromhex(read_text("amd-sev-snp/virtee-sev/report_milan.hex").strip()))
    assert hexed.version == 2 and hexed.signing_key == "vcek"


@pytest.mark.parametrize("size", [0, 1, 0x2A0, 0x49F, 0x4A1, 0x1000])
def test_the_length_must_be_exactly_0x4a0(size: int) -> None:
    raw = (_raw(V2_MILAN) + bytes(0x1000))[:size]
    with pytest.raises(EvidenceParseError, match=r"exactly 1184") as exc:
        parse_report(raw)
    assert exc.value.field == "report"


def test_not_bytes_is_a_parse_error() -> None:
    with pytest.raises(EvidenceParseError, match="must be bytes"):
        parse_report("a report")  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [0, 1, 6, 7, 0x100, 0xFFFFFFFF])
def test_unsupported_versions_are_rejected_by_name(version: int) -> None:
    with pytest.raises(
        EvidenceParseError, match=rf"report version {version} is not supported \(2, 3, 4, 5\)"
    ) as exc:
        parse_report(_set(_raw(V3_VLEK), 0, struct.pack("<I", version)))
    assert exc.value.field == "version" and exc.value.offset == 0


def test_version_4_is_read_with_the_version_3_layout() -> None:
    r = parse_report(_set(_raw(V3_VLEK), 0, struct.pack("<I", 4)))
    assert r.version == 4 and r.cpuid_product == "Milan" and r.launch_mit_vector is None
    # ... including its reserved ranges: a field version 4 might have added there is refused.
    with pytest.raises(EvidenceParseError, match="reserved_1f8"):
        parse_report(_set(_set(_raw(V3_VLEK), 0, struct.pack("<I", 4)), 0x1F8, b"\x01"))


def test_version_5_has_mitigation_vectors() -> None:
    raw = _set(_set(_raw(V3_VLEK), 0, struct.pack("<I", 5)), 0x1F8, struct.pack("<QQ", 0x5, 0x7))
    r = parse_report(raw)
    assert r.launch_mit_vector == 5 and r.current_mit_vector == 7
    with pytest.raises(EvidenceParseError, match="reserved_208") as exc:
        parse_report(_set(raw, 0x208, b"\x80"))
    assert exc.value.offset == 0x208


# (report, offset, byte, field): one byte inside each must-be-zero range (first, last).
_MBZ = [
    (V3_VLEK, 0x04C, 0x01, "reserved_04c"),
    (V3_VLEK, 0x04F, 0x80, "reserved_04c"),
    (V2_MILAN, 0x188, 0x19, "reserved_188"),  # v2 has no CPUID
    (V2_MILAN, 0x18A, 0x01, "reserved_188"),
    (V3_VLEK, 0x18B, 0x01, "reserved_18b"),
    (V3_VLEK, 0x19F, 0x01, "reserved_18b"),
    (V3_VLEK, 0x1EB, 0x01, "reserved_1eb"),
    (V3_VLEK, 0x1EF, 0x01, "reserved_1ef"),
    (V3_VLEK, 0x1F8, 0x01, "reserved_1f8"),  # v3: no mitigation vectors
    (V3_VLEK, 0x29F, 0x01, "reserved_1f8"),
    (V2_MILAN, 0x2A0 + 48, 0x01, "signature.r"),
    (V2_MILAN, 0x2E7, 0x01, "signature.r"),
    (V2_MILAN, 0x2E8 + 48, 0x01, "signature.s"),
    (V2_MILAN, 0x32F, 0x01, "signature.s"),
    (V2_MILAN, 0x330, 0x01, "signature.reserved"),
    (V2_MILAN, 0x49F, 0x01, "signature.reserved"),
]


@pytest.mark.parametrize(("rel", "offset", "value", "field"), _MBZ)
def test_must_be_zero_ranges_are_rejected_with_field_and_offset(
    rel: str, offset: int, value: int, field: str
) -> None:
    with pytest.raises(EvidenceParseError, match=f"{field} .* must be zero, byte 0x{offset:03X}") as exc:
        parse_report(_set(_raw(rel), offset, bytes([value])))
    assert exc.value.field == field and exc.value.offset == offset


def test_every_unsigned_byte_must_be_zero() -> None:
    """0x330..0x49F is not covered by the signature (TEE-Attestation-Verification#141): any change is refused."""
    raw = _raw(V2_MILAN)
    for offset in range(0x330, 0x4A0):
        with pytest.raises(EvidenceParseError, match="signature.reserved"):
            parse_report(_set(raw, offset, b"\x01"))


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (0x1001F, "bit 17 is reserved and must be one"),
        (0x3001F | 1 << 26, "bits 63:26 must be zero"),
        (0x3001F | 1 << 63, "bits 63:26 must be zero"),
    ],
)
def test_policy_reserved_bits(policy: int, message: str) -> None:
    with pytest.raises(EvidenceParseError, match=message) as exc:
        parse_report(_set(_raw(V2_MILAN), 0x08, struct.pack("<Q", policy)))
    assert exc.value.field == "policy" and exc.value.offset == 0x08


def test_policy_bits_are_decoded() -> None:
    every = 0x3FFFFFF
    d = abi.GuestPolicy(every).to_dict()
    assert all(d[k] for k in d if k not in ("value", "abi_major", "abi_minor"))
    assert d["abi_major"] == 0xFF and d["abi_minor"] == 0xFF
    none = abi.GuestPolicy(1 << 17).to_dict()
    assert not any(v for k, v in none.items() if k != "value")


@pytest.mark.parametrize(
    ("key_info", "message", "field"),
    [
        (1 << 5, "bits 31:5 must be zero", "key_info"),
        (1 << 31, "bits 31:5 must be zero", "key_info"),
        *[(code << 2, f"signing_key {code} is reserved", "key_info.signing_key") for code in range(2, 7)],
    ],
)
def test_key_info_reserved_values(key_info: int, message: str, field: str) -> None:
    with pytest.raises(EvidenceParseError, match=message) as exc:
        parse_report(_set(_raw(V2_MILAN), 0x48, struct.pack("<I", key_info)))
    assert exc.value.field == field


def test_unsigned_reports_parse_and_say_so() -> None:
    """MASK_CHIP_KEY and signing key 7 are well formed; ``verify`` refuses them (test_snp_verify)."""
    masked = parse_report(_set(_raw(V2_MILAN), 0x48, struct.pack("<I", 0b10)))
    assert masked.key_info.mask_chip_key
    none = parse_report(_set(_raw(V2_MILAN), 0x48, struct.pack("<I", 7 << 2)))
    assert none.signing_key is None and none.key_info.signing_key_code == 7


@pytest.mark.parametrize("algo", [0, 2, 0xFFFFFFFF])
def test_signature_algorithm_other_than_ecdsa_p384_is_rejected(algo: int) -> None:
    with pytest.raises(EvidenceParseError, match=f"signature_algo {algo} is not supported"):
        parse_report(_set(_raw(V2_MILAN), 0x34, struct.pack("<I", algo)))


def test_vmpl_above_3_is_rejected() -> None:
    with pytest.raises(EvidenceParseError, match="vmpl 4 is not 0-3"):
        parse_report(_set(_raw(V2_MILAN), 0x30, struct.pack("<I", 4)))


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x00, "Milan"),
        (0x19, 0x01, "Milan"),
        (0x19, 0x0F, "Milan"),
        (0x19, 0x10, "Genoa"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x19, 0xAF, "Genoa"),
        (0x1A, 0x02, "Turin"),
        (0x1A, 0x11, "Turin"),
        (0x19, 0x20, None),
        (0x19, 0x74, None),  # Phoenix: a client part
        (0x1A, 0x50, None),  # Venice: not supported here
        (0x17, 0x31, None),  # Rome has no SEV-SNP
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert product_from_cpuid(family, model) == product


def test_tcb_layout_depends_on_the_product() -> None:
    """The same bytes read as Milan and as Turin (virtee/snphost#125: ucode shown as FMC)."""
    milan = decode_tcb(bytes.fromhex("0300000000000873"), "Milan")
    assert milan == Tcb(bootloader=3, tee=0, snp=8, microcode=0x73)
    turin = decode_tcb(bytes.fromhex("0102030400000009"), "Turin")
    assert turin == Tcb(bootloader=2, tee=3, snp=4, microcode=9, fmc=1)
    assert turin.encode("Turin").hex() == "0102030400000009"
    assert milan.encode("Milan").hex() == "0300000000000873"
    assert milan.encode("Genoa") == milan.encode("Milan")
    # A Milan TCB read as Turin: its SNP byte lands in a reserved byte and is refused.
    with pytest.raises(EvidenceParseError, match="byte 6 is reserved in the Turin TCB_VERSION layout") as exc:
        decode_tcb(bytes.fromhex("0300000000000873"), "Turin", field="reported_tcb", offset=0x180)
    assert exc.value.offset == 0x186 and exc.value.field == "reported_tcb"
    for i in (2, 3, 4, 5):
        raw = bytearray(8)
        raw[i] = 1
        with pytest.raises(EvidenceParseError, match=f"byte {i} is reserved in the Genoa"):
            decode_tcb(bytes(raw), "Genoa")
    with pytest.raises(EvidenceParseError, match="expected 8 bytes"):
        decode_tcb(bytes(7), "Milan")
    with pytest.raises(ValueError, match="FMC"):
        Tcb(1, 2, 3, 4).encode("Turin")
    with pytest.raises(ValueError, match="no FMC"):
        Tcb(1, 2, 3, 4, fmc=0).encode("Milan")


def test_tcb_order_is_component_wise() -> None:
    low, high = Tcb(1, 0, 5, 0x40), Tcb(1, 0, 6, 0x40)
    assert low.le(high) and low.le(low) and not high.le(low)
    assert not Tcb(2, 0, 5, 0x40).le(Tcb(1, 0, 9, 0x99))  # one component above is enough
    assert not Tcb(1, 0, 5, 0x40).le(Tcb(1, 0, 5, 0x40, fmc=0))  # different products never compare


def test_report_tcbs_use_the_report_offsets_in_errors() -> None:
    raw = _set(_raw(V2_MILAN), 0x1E0 + 3, b"\x01")  # COMMITTED_TCB byte 3 (reserved on Milan)
    with pytest.raises(EvidenceParseError, match="committed_tcb") as exc:
        parse_report(raw).tcbs("Milan")
    assert exc.value.offset == 0x1E3


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=0x4A0 + 8))
def test_arbitrary_bytes_raise_only_parse_errors(data: bytes) -> None:
    try:
        parse_report(data)
    except EvidenceParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0x49F), st.integers(1, 255))
def test_single_byte_changes_parse_or_fail_cleanly(offset: int, xor: int) -> None:
    raw = bytearray(_raw(V3_VLEK))
    raw[offset] ^= xor
    try:
        r = parse_report(bytes(raw))
    except EvidenceParseError:
        return
    assert r.raw == bytes(raw)
