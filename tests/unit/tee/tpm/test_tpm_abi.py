"""TPM structure parsing: exact lengths, limits, reserved bits, Names; errors name field and offset."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.helpers import tpm_build as tb
from tests.vectors.corpus import read_bytes

from keybroker.errors import EvidenceParseError
from keybroker.tee.tpm.abi import (
    ALG_RSASSA,
    ALG_SHA256,
    HIERARCHY_ENDORSEMENT,
    TpmSignature,
    hierarchy_qualified_name,
    parse_attest,
    parse_pcr_selection,
    parse_signature,
    parse_tpm2b_public,
    parse_tpmt_public,
    qualified_name,
)

GCE = "tpm2-gce/go-tpm-tools/extracted/gce-cos-85-nonce9009"
KEYLIME = "tpm2-emulator/keylime"
QUOTES = [
    f"{GCE}/quote_sha1.msg",
    f"{GCE}/quote_sha256.msg",
    f"{GCE}/quote_sha384.msg",
    f"{KEYLIME}/quote.out",
]
SIGS = [f"{GCE}/quote_sha256.sig", f"{KEYLIME}/quotesig.out"]
PUBLICS = [f"{GCE}/ak.tpm2b_public", f"{KEYLIME}/ak.pub", f"{KEYLIME}/ek.pub"]


@pytest.mark.parametrize("rel", QUOTES)
def test_corpus_quotes_parse_and_every_truncation_is_refused(rel: str) -> None:
    raw = read_bytes(rel)
    attest = parse_attest(raw)
    assert attest.raw == raw
    for n in range(len(raw)):
        with pytest.raises(EvidenceParseError) as info:
            parse_attest(raw[:n])
        assert info.value.field is not None and info.value.field.startswith("TPMS_ATTEST.")
    with pytest.raises(EvidenceParseError, match="1 trailing bytes") as info:
        parse_attest(raw + b"\x00")
    assert info.value.offset == len(raw)


def test_gce_quote_fields() -> None:
    a = parse_attest(read_bytes(f"{GCE}/quote_sha256.msg"))
    assert a.extra_data == bytes.fromhex("9009")
    assert a.clock_info.reset_count == 10 and a.clock_info.restart_count == 0 and a.clock_info.safe
    assert [(s.bank, s.pcrs) for s in a.pcr_select] == [("sha256", tuple(range(24)))]
    assert a.qualified_signer[:2] == b"\x00\x0b" and len(a.qualified_signer) == 34


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, b"\xff\x54\x43\x48", "TPMS_ATTEST.magic"),
        (4, b"\x80\x17", "TPMS_ATTEST.type"),  # TPM_ST_ATTEST_CERTIFY etc. are not quotes
    ],
)
def test_magic_and_type_are_checked(offset: int, value: bytes, field: str) -> None:
    raw = bytearray(read_bytes(f"{GCE}/quote_sha256.msg"))
    raw[offset : offset + len(value)] = value
    with pytest.raises(EvidenceParseError) as info:
        parse_attest(bytes(raw))
    assert info.value.field == field and info.value.offset == offset


def test_the_documented_offsets_of_the_gce_quote() -> None:
    """parse_attest's table: Q = 34 (a SHA-256 Name), E = 2 (the nonce 0x9009): safe at 10 + Q + E + 16,
    firmwareVersion at 27 + Q + E, pcrSelect.count at 35 + Q + E; errors carry those offsets."""
    raw = read_bytes(f"{GCE}/quote_sha256.msg")
    q, e = 34, 2
    assert raw[6:8] == struct.pack(">H", q) and raw[8 + q : 10 + q] == struct.pack(">H", e)
    a = parse_attest(raw)
    assert raw[27 + q + e : 35 + q + e] == struct.pack(">Q", a.firmware_version)
    for offset, value, field in (
        (10 + q + e + 16, b"\x02", "TPMS_ATTEST.clockInfo.safe"),
        (35 + q + e, struct.pack(">I", 17), "TPMS_ATTEST.pcrSelect.count"),
    ):
        bad = bytearray(raw)
        bad[offset : offset + len(value)] = value
        with pytest.raises(EvidenceParseError) as info:
            parse_attest(bytes(bad))
        assert info.value.field == field and info.value.offset == offset


def test_limits_and_selection_rules() -> None:
    base = tb.AttestFields(pcrs={"sha256": {0: bytes(32)}})
    with pytest.raises(EvidenceParseError, match="extraData.size: size 67 exceeds the limit 66"):
        parse_attest(tb.attest(tb.AttestFields(pcrs=base.pcrs, extra_data=bytes(67))))
    assert parse_attest(tb.attest(tb.AttestFields(pcrs=base.pcrs, extra_data=bytes(66)))).extra_data == bytes(
        66
    )
    with pytest.raises(EvidenceParseError, match="safe: TPMI_YES_NO is 2"):
        parse_attest(tb.attest(tb.AttestFields(pcrs=base.pcrs, safe=2)))
    twice = struct.pack(">I", 2) + (struct.pack(">HB", ALG_SHA256, 3) + b"\x01\x00\x00") * 2
    with pytest.raises(EvidenceParseError, match="bank sha256 selected twice"):
        parse_pcr_selection(twice)
    with pytest.raises(EvidenceParseError, match="sizeofSelect 5 exceeds 4"):
        parse_pcr_selection(struct.pack(">IHB", 1, ALG_SHA256, 5) + bytes(5))
    with pytest.raises(EvidenceParseError, match="17 banks, at most 16"):
        parse_pcr_selection(struct.pack(">I", 17))
    sel = parse_pcr_selection(struct.pack(">IHB", 1, ALG_SHA256, 3) + bytes([0b1000_0001, 0, 0b1000_0000]))
    assert sel[0].pcrs == (0, 7, 23)


@pytest.mark.parametrize("rel", SIGS)
def test_corpus_signatures_roundtrip(rel: str) -> None:
    raw = read_bytes(rel)
    sig = parse_signature(raw)
    assert sig.scheme == "rsassa-sha256" and len(sig.sig) == 256
    assert sig.marshal() == raw
    with pytest.raises(EvidenceParseError, match="trailing"):
        parse_signature(raw + b"\x00")
    for n in range(len(raw)):
        with pytest.raises(EvidenceParseError):
            parse_signature(raw[:n])


def test_signature_schemes_and_hashes() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    ecdsa = parse_signature(tb.sign(key, b"m", "ecdsa", "sha384"))
    assert ecdsa.scheme == "ecdsa-sha384" and len(ecdsa.r) == len(ecdsa.s) == 48
    with pytest.raises(EvidenceParseError, match="signature scheme 0x0015 is not RSASSA, RSAPSS or ECDSA"):
        parse_signature(struct.pack(">HH", 0x0015, ALG_SHA256) + tb.b2(b"x"))
    with pytest.raises(EvidenceParseError, match="hash 0x0012 is not SHA-1"):
        parse_signature(struct.pack(">HH", ALG_RSASSA, 0x0012) + tb.b2(b"x"))
    raw = TpmSignature.raw_rsassa(b"\x01" * 256)
    assert raw.scheme == "rsassa-sha256"
    with pytest.raises(EvidenceParseError):
        TpmSignature.raw_rsassa(b"")


@pytest.mark.parametrize("rel", PUBLICS)
def test_corpus_public_areas(rel: str) -> None:
    raw = read_bytes(rel)
    pub = parse_tpm2b_public(raw)
    assert pub.name == b"\x00\x0b" + hashlib.sha256(raw[2:]).digest()
    assert pub.raw == raw[2:]
    assert pub.key_type == "rsa-2048"
    for n in range(len(raw)):
        with pytest.raises(EvidenceParseError):
            parse_tpm2b_public(raw[:n])
    with pytest.raises(EvidenceParseError, match="trailing"):
        parse_tpm2b_public(raw + b"\x00")
    # the TPM2B size must cover the area exactly
    longer = struct.pack(">H", len(raw) - 1) + raw[2:] + b"\x00"
    with pytest.raises(EvidenceParseError, match="trailing"):
        parse_tpm2b_public(longer)


def test_gce_ak_qualified_name_is_the_quotes_qualified_signer() -> None:
    ak = parse_tpm2b_public(read_bytes(f"{GCE}/ak.tpm2b_public"))
    quote = parse_attest(read_bytes(f"{GCE}/quote_sha256.msg"))
    assert qualified_name(hierarchy_qualified_name(HIERARCHY_ENDORSEMENT), ak) == quote.qualified_signer


def test_public_key_matches_the_pem() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    pem = load_pem_public_key(read_bytes(f"{KEYLIME}/akpub.pem"))
    ak = parse_tpm2b_public(read_bytes(f"{KEYLIME}/ak.pub"))
    der = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    assert ak.public_key().public_bytes(*der) == pem.public_bytes(*der)


def test_public_area_rules() -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    good = tb.rsa_public_area(key)
    assert parse_tpm2b_public(good).exponent == 65537
    with pytest.raises(EvidenceParseError, match="reserved bits 0x00000001 are set"):
        parse_tpm2b_public(tb.rsa_public_area(key, attributes=tb.AK_ATTRIBUTES | 1))
    with pytest.raises(EvidenceParseError, match="reserved bits 0x00100000"):
        parse_tpm2b_public(tb.rsa_public_area(key, attributes=tb.AK_ATTRIBUTES | 1 << 20))
    with pytest.raises(EvidenceParseError, match="authPolicy: 20 bytes, sha256 digests are 32"):
        parse_tpm2b_public(tb.rsa_public_area(key, auth_policy=bytes(20)))
    body = bytearray(good[2:])
    body[0:2] = b"\x00\x08"  # KEYEDHASH
    with pytest.raises(EvidenceParseError, match="object type 0x0008 is not RSA"):
        parse_tpmt_public(bytes(body))
    body = bytearray(good[2:])
    keybits = body.index(struct.pack(">H", 2048) + bytes(4))
    body[keybits : keybits + 2] = struct.pack(">H", 3072)
    with pytest.raises(EvidenceParseError, match="not a 3072-bit number"):
        parse_tpmt_public(bytes(body))
    eck = ec.generate_private_key(ec.SECP256R1()).public_key()
    pub = parse_tpm2b_public(tb.ecc_public_area(eck))
    assert pub.key_type == "ecc-P-256" and pub.public_key() == eck
    bad = bytearray(tb.ecc_public_area(eck))
    bad[-1] ^= 1  # y no longer on the curve
    with pytest.raises(EvidenceParseError, match="not a valid public key"):
        parse_tpm2b_public(bytes(bad))


def test_swtpm_names_match_tpm2_tools(swtpm: object) -> None:
    from tests.helpers.swtpm import Swtpm

    assert isinstance(swtpm, Swtpm)
    for alg, scheme in (("rsa", "rsassa"), ("ecc", "ecdsa")):
        ak = swtpm.create_ak(alg=alg, scheme=scheme)
        assert parse_tpm2b_public(ak.public).name == ak.name
    for kind in ("rsa", "ecc"):
        ek = parse_tpm2b_public(swtpm.ek_public(kind))
        assert ek.has(0x00030000)  # restricted | decrypt
