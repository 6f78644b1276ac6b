"""verify_quote beyond the corpus: trust roots (dev simulator), revocation, collateral PCK chains, API edges."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from tests.helpers.quote_layout import one_char_undecodable_leaf
from tests.vectors.corpus import case, read_bytes, read_text, verify_at

from keybroker.errors import CollateralError, EvidenceParseError, VerificationError
from keybroker.tee.dcap import INTEL_SGX_ROOT_CA, QuoteCollateral, quote_fmspc_and_ca, verify_quote
from keybroker.tee.dcap.abi import INTEL_QE_VENDOR_ID, canonical_quote, parse_quote
from keybroker.tee.dcap.claims import SgxClaims, TdxClaims
from keybroker.tee.dcap.plugin import dcap_verifiers
from keybroker.tee.dcap.sources import StaticCollateral
from keybroker.tee.sim import SGX_TCB, TDX_TCB, DevPki, sgx_quote, tdx_quote
from keybroker.tee.verifier import NO_REPORT_DATA, Verifier

ISSUED = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
AT = ISSUED + dt.timedelta(hours=1)
RD = bytes(range(64))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki.create(tmp_path_factory.mktemp("dcap-devpki") / "pki", now=ISSUED)


def _coll(pki: DevPki, tee: str) -> QuoteCollateral:
    return QuoteCollateral.from_json(pki.collateral_json(tee))  # type: ignore[arg-type]


def test_intel_root_is_pinned() -> None:
    assert INTEL_SGX_ROOT_CA.subject.rfc4514_string().endswith("CN=Intel SGX Root CA")
    der = read_bytes("intel-dcap/phala-dcap-qvl/IntelSGXRootCA.der")
    assert INTEL_SGX_ROOT_CA.public_bytes(Encoding.DER) == der


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_sim_quotes_verify_only_with_the_dev_root(pki: DevPki, tee: str) -> None:
    quote = sgx_quote(pki, report_data=RD) if tee == "sgx" else tdx_quote(pki, report_data=RD)
    coll = _coll(pki, tee)
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, coll, at=AT)
    assert info.value.check == "pck_chain" and "not a trusted root" in str(info.value)
    result = verify_quote(quote, coll, at=AT, dev_roots=[pki.root_cert])
    assert result.root == "dev" and result.sim
    assert result.status == "UpToDate" and result.report_data == RD
    assert result.tee == tee and result.pck_ca == ("processor" if tee == "sgx" else "platform")


@pytest.mark.parametrize("tcb", ["uptodate", "swhardening", "outofdate"])
def test_sim_tcb_levels(pki: DevPki, tcb: str) -> None:
    for tee, table in (("sgx", SGX_TCB), ("tdx", TDX_TCB)):
        quote = (sgx_quote if tee == "sgx" else tdx_quote)(pki, report_data=RD, tcb=tcb)  # type: ignore[operator]
        result = verify_quote(quote, _coll(pki, tee), at=AT, dev_roots=[pki.root_cert])
        assert result.status == table[tcb].status  # type: ignore[index]
        assert result.advisory_ids == table[tcb].advisory_ids  # type: ignore[index]


def test_revoked_tcb_level_is_rejected(pki: DevPki) -> None:
    quote = tdx_quote(pki, report_data=RD, tcb="revoked")
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, _coll(pki, "tdx"), at=AT, dev_roots=[pki.root_cert])
    assert info.value.check == "tcb_status" and "Revoked" in str(info.value)


def test_debug_and_sept_ve_disable_are_claims_not_rejections(pki: DevPki) -> None:
    td = verify_quote(
        tdx_quote(pki, report_data=RD, debug=True, sept_ve_disable=False),
        _coll(pki, "tdx"),
        at=AT,
        dev_roots=[pki.root_cert],
    )
    assert isinstance(td.claims, TdxClaims) and td.claims.debug and not td.claims.sept_ve_disable
    enclave = verify_quote(
        sgx_quote(pki, report_data=RD, debug=True), _coll(pki, "sgx"), at=AT, dev_roots=[pki.root_cert]
    )
    assert isinstance(enclave.claims, SgxClaims) and enclave.claims.debug
    assert enclave.claims.to_dict()["attributes"]["debug"] is True


def test_revoked_pck_certificate(tmp_path: Path) -> None:
    fresh = DevPki.create(tmp_path / "pki", now=ISSUED)
    quote = sgx_quote(fresh, report_data=RD)
    assert verify_quote(quote, _coll(fresh, "sgx"), at=AT, dev_roots=[fresh.root_cert]).status == "UpToDate"
    fresh.revoke_pck("sgx", now=ISSUED + dt.timedelta(minutes=1))
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, _coll(fresh, "sgx"), at=AT, dev_roots=[fresh.root_cert])
    assert info.value.check == "pck_crl" and "revoked" in str(info.value)


def test_dev_collateral_does_not_verify_intel_quotes(pki: DevPki) -> None:
    c = case("dcap-tdx-phala")
    with pytest.raises(VerificationError) as info:
        verify_quote(read_bytes(c["quote"]), _coll(pki, "tdx"), at=verify_at(c), dev_roots=[pki.root_cert])
    assert info.value.check == "collateral_chains"


def test_collateral_pck_chain_must_match_the_quote() -> None:
    c = case("dcap-tdx15ex-phala")
    coll = QuoteCollateral.from_json(read_text(c["collateral"]))
    assert coll.pck_certificate_chain is not None
    assert verify_quote(read_bytes(c["quote"]), coll, at=verify_at(c)).status == "UpToDate"
    other = case("dcap-tdx-phala")
    with pytest.raises(VerificationError) as info:
        verify_quote(read_bytes(other["quote"]), coll, at=verify_at(c))
    assert info.value.check == "pck_chain" and "differs" in str(info.value)


def test_cached_results_do_not_leak_across_times() -> None:
    c = case("dcap-sgx-phala")
    quote, coll = read_bytes(c["quote"]), QuoteCollateral.from_json(read_text(c["collateral"]))
    assert verify_quote(quote, coll, at=verify_at(c)).status == "ConfigurationAndSWHardeningNeeded"
    with pytest.raises(VerificationError):
        verify_quote(quote, coll, at=verify_at(c) + dt.timedelta(days=365))
    assert verify_quote(quote, coll, at=verify_at(c)).status == "ConfigurationAndSWHardeningNeeded"


def test_equal_content_collateral_objects_share_the_cache() -> None:
    text = read_text("intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json")
    a = QuoteCollateral.from_json(text)
    b = QuoteCollateral._from_json_uncached(text.encode())
    assert a is not b and a == b and hash(a) == hash(b)


def test_naive_time_is_refused() -> None:
    c = case("dcap-sgx-phala")
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_quote(
            read_bytes(c["quote"]),
            QuoteCollateral.from_json(read_text(c["collateral"])),
            at=dt.datetime(2025, 7, 4),
        )


def test_verified_quote_to_dict_is_json_ready() -> None:
    c = case("dcap-tdx15ex-phala")
    result = verify_quote(
        read_bytes(c["quote"]), QuoteCollateral.from_json(read_text(c["collateral"])), at=verify_at(c)
    )
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["claims"]["td_report_version"] == "1.5ex"
    assert doc["claims"]["td_id"] is not None
    assert doc["fmspc"] == "B0C06F000000" and doc["root"] == "intel" and doc["sim"] is False
    assert doc["checks"][0] == "parse" and doc["checks"][-1] == "tcb_status"


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("intel-dcap/phala-dcap-qvl/sgx_quote", ("00A067110000", "processor", "sgx")),
        ("intel-dcap/phala-dcap-qvl/tdx_quote", ("B0C06F000000", "platform", "tdx")),
        ("intel-dcap/google-go-tdx-guest/ccel/cos-113-tdx-quote.dat", ("00806F050000", "platform", "tdx")),
    ],
)
def test_quote_fmspc_and_ca(rel: str, expected: tuple[str, str, str]) -> None:
    assert quote_fmspc_and_ca(read_bytes(rel)) == expected


def test_quote_fmspc_and_ca_errors() -> None:
    with pytest.raises(EvidenceParseError):
        quote_fmspc_and_ca(b"\x03\x00")
    raw = bytearray(read_bytes("intel-dcap/phala-dcap-qvl/sgx_quote"))
    # Certification data type 5 -> 3 (PPID encrypted, RSA-3072): no chain to read from.
    type_at = 48 + 384 + 4 + 64 + 64 + 384 + 64 + 2 + 32
    assert raw[type_at] == 5
    raw[type_at] = 3
    with pytest.raises(CollateralError, match="no PCK certificate chain"):
        quote_fmspc_and_ca(bytes(raw))
    c = case("dcap-sgx-phala")
    with pytest.raises(VerificationError) as info:
        verify_quote(bytes(raw), QuoteCollateral.from_json(read_text(c["collateral"])), at=verify_at(c))
    assert info.value.check == "pck_chain" and "type 3" in str(info.value)


def _resign(
    pki: DevPki, tee: str, *, text: str, signer_key: ec.EllipticCurvePrivateKey, chain_pem: str
) -> QuoteCollateral:
    doc = json.loads(pki.collateral_json(tee))  # type: ignore[arg-type]
    r, s = decode_dss_signature(signer_key.sign(text.encode(), ec.ECDSA(hashes.SHA256())))
    doc.update(tcb_info=text, tcb_info_signature=(r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex())
    doc["tcb_info_issuer_chain"] = chain_pem
    return QuoteCollateral.from_json(json.dumps(doc))


def test_tcb_info_signed_by_a_pck_key_is_refused(pki: DevPki) -> None:
    """A PCK certificate chains to the root too: its key must not be able to sign TCB Info."""
    quote = tdx_quote(pki, report_data=RD, tcb="outofdate")
    platform = pki.platform("tdx")
    text = json.loads(pki.collateral_json("tdx"))["tcb_info"].replace('"OutOfDate"', '"UpToDate"')
    forged = _resign(
        pki,
        "tdx",
        text=text,
        signer_key=platform.pck["uptodate"].key,
        chain_pem=pki.pck_chain_pem(platform, "uptodate").decode(),
    )
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, forged, at=AT, dev_roots=[pki.root_cert])
    assert info.value.check == "collateral_chains"
    # The same text signed by the real TCB Signing key is accepted (the check is about the signer).
    genuine_chain = json.loads(pki.collateral_json("tdx"))["tcb_info_issuer_chain"]
    resigned = _resign(pki, "tdx", text=text, signer_key=pki.tcb_signing.key, chain_pem=genuine_chain)
    assert verify_quote(quote, resigned, at=AT, dev_roots=[pki.root_cert]).status == "UpToDate"


def test_pck_ca_revoked_by_the_root_crl(pki: DevPki) -> None:
    doc = json.loads(pki.collateral_json("sgx"))
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.root_cert.subject)
        .last_update(ISSUED)
        .next_update(ISSUED + dt.timedelta(days=30))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(pki.processor_ca.cert.serial_number)
            .revocation_date(ISSUED)
            .build()
        )
        .sign(pki.root.key, hashes.SHA256())
    )
    doc["root_ca_crl"] = crl.public_bytes(Encoding.DER).hex()
    with pytest.raises(VerificationError) as info:
        verify_quote(
            sgx_quote(pki, report_data=RD),
            QuoteCollateral.from_json(json.dumps(doc)),
            at=AT,
            dev_roots=[pki.root_cert],
        )
    assert info.value.check == "root_ca_crl" and "revoked" in str(info.value)


def test_revoked_qe_level_is_rejected(pki: DevPki) -> None:
    doc = json.loads(pki.collateral_json("tdx"))
    identity = json.loads(doc["qe_identity"])
    for level in identity["tcbLevels"]:
        level["tcbStatus"] = "Revoked"
    text = json.dumps(identity, separators=(",", ":"))
    r, s = decode_dss_signature(pki.tcb_signing.key.sign(text.encode(), ec.ECDSA(hashes.SHA256())))
    doc.update(qe_identity=text, qe_identity_signature=(r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex())
    with pytest.raises(VerificationError) as info:
        verify_quote(
            tdx_quote(pki, report_data=RD),
            QuoteCollateral.from_json(json.dumps(doc)),
            at=AT,
            dev_roots=[pki.root_cert],
        )
    assert info.value.check == "qe_identity" and "Revoked" in str(info.value)


# --- issue 11: the adversarial review ------------------------------------------------------------


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_qe_vendor_id_must_be_intels(pki: DevPki, tee: str) -> None:
    """A quote signed by a trusted PKI but naming another QE vendor is refused (item 12)."""
    make = sgx_quote if tee == "sgx" else tdx_quote
    genuine = make(pki, report_data=RD)  # type: ignore[operator]
    assert parse_quote(genuine).header.qe_vendor_id == INTEL_QE_VENDOR_ID  # as real quotes carry it
    for vendor in (bytes(16), bytes.fromhex("00" * 15 + "01")):
        quote = make(pki, report_data=RD, qe_vendor_id=vendor)  # type: ignore[operator]
        with pytest.raises(VerificationError) as info:
            verify_quote(quote, _coll(pki, tee), at=AT, dev_roots=[pki.root_cert])
        assert info.value.check == "qe_vendor_id"
        assert vendor.hex() in str(info.value) and INTEL_QE_VENDOR_ID.hex() in str(info.value)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A second, independent dev PKI (its own root), trusted alongside the first."""
    return DevPki.create(tmp_path_factory.mktemp("dcap-devpki-b") / "pki", now=ISSUED)


def _root_crl(pki: DevPki, revoked: list[int]) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.root_cert.subject)
        .last_update(ISSUED)
        .next_update(ISSUED + dt.timedelta(days=30))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(ISSUED).build()
        )
    return builder.sign(pki.root.key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_every_chain_and_crl_ends_at_the_pck_chains_root(pki: DevPki, other_pki: DevPki) -> None:
    """Two trusted roots A and B (item 13). A revokes its PCK Processor CA in its root CA CRL. A
    quote chaining to A, with A's PCK CRL but B's TCB Info, QE Identity and root CA CRL, used to
    verify: B's CRL was checked, A's never. Every chain and CRL must end at the PCK chain's root."""
    roots = [pki.root_cert, other_pki.root_cert]
    quote = sgx_quote(pki, report_data=RD)
    a = json.loads(pki.collateral_json("sgx"))
    a["root_ca_crl"] = _root_crl(pki, [pki.processor_ca.cert.serial_number]).hex()
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, QuoteCollateral.from_json(json.dumps(a)), at=AT, dev_roots=roots)
    assert info.value.check == "root_ca_crl" and "revoked" in str(info.value)

    mixed = json.loads(other_pki.collateral_json("sgx"))
    mixed.update(pck_crl=a["pck_crl"], pck_crl_issuer_chain=a["pck_crl_issuer_chain"])
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, QuoteCollateral.from_json(json.dumps(mixed)), at=AT, dev_roots=roots)
    assert info.value.check == "collateral_chains" and "different roots" in str(info.value)

    # All of B's collateral for a quote of A: refused for its root, before any CRL is looked at.
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, _coll(other_pki, "sgx"), at=AT, dev_roots=roots)
    assert info.value.check == "collateral_chains"
    assert hashlib.sha256(pki.root_der).hexdigest()[:16] in str(info.value)
    # Each PKI's own collateral still verifies with both roots trusted.
    for p in (pki, other_pki):
        assert verify_quote(sgx_quote(p, report_data=RD), _coll(p, "sgx"), at=AT, dev_roots=roots).sim


def test_only_zero_padding_may_follow_a_quote(pki: DevPki) -> None:
    """Trailing bytes used to be accepted whatever they were (item 14): zeros still are (configfs
    pads quotes) and give the same ``evidence_sha256``; anything else is refused."""
    quote = tdx_quote(pki, report_data=RD)
    coll = _coll(pki, "tdx")
    plain = verify_quote(quote, coll, at=AT, dev_roots=[pki.root_cert])
    assert plain.evidence_sha256 == hashlib.sha256(quote).hexdigest()
    padded = verify_quote(quote + bytes(4096), coll, at=AT, dev_roots=[pki.root_cert])
    assert padded.evidence_sha256 == plain.evidence_sha256 and padded.claims == plain.claims
    assert canonical_quote(quote + bytes(7)) == quote
    for junk in (b"\x01", bytes(99) + b"\x80", b"extra bytes"):
        assert canonical_quote(quote + junk) == quote + junk  # not a quote: named as sent
        with pytest.raises(EvidenceParseError) as info:
            verify_quote(quote + junk, coll, at=AT, dev_roots=[pki.root_cert])
        assert info.value.field == "trailing_bytes"
        assert info.value.offset == len(quote) + next(i for i, b in enumerate(junk) if b)


def test_the_plugin_names_and_verifies_each_quote_by_its_own_bytes(pki: DevPki) -> None:
    """The plugin reuses its last parse for the same bytes (a release digests the evidence, then
    verifies it): a digest or a verification is always of the bytes given, whatever came before."""
    coll = _coll(pki, "tdx")
    verifier = Verifier(dcap_verifiers(StaticCollateral([coll]), [pki.root_cert]), clock=lambda: AT)
    first, second = tdx_quote(pki, report_data=RD), tdx_quote(pki, report_data=bytes(64))
    for _ in range(2):
        for quote, rd in ((first, RD), (second, bytes(64)), (first + bytes(9), RD)):
            digest = verifier.evidence_sha256("tdx", quote)
            assert digest == hashlib.sha256(canonical_quote(quote)).hexdigest()
            verified = verifier.verify("tdx", quote, rd)
            assert verified.evidence_sha256 == digest and verified.report_data == rd
    assert verifier.evidence_sha256("tdx", first) != verifier.evidence_sha256("tdx", second)
    # a changed signed byte after the same quote was parsed: refused, not the cached verdict
    forged = bytearray(first)
    forged[100] ^= 1
    assert verifier.evidence_sha256("tdx", bytes(forged)) == hashlib.sha256(bytes(forged)).hexdigest()
    with pytest.raises(VerificationError):
        verifier.verify("tdx", bytes(forged), RD)
    assert verifier.evidence_sha256("tdx", b"not a quote") == hashlib.sha256(b"not a quote").hexdigest()
    with pytest.raises(EvidenceParseError):
        verifier.verify("tdx", b"not a quote", RD)


def _tcb_levels_resigned(pki: DevPki, tee: str, edit: Any) -> QuoteCollateral:
    text = json.loads(pki.collateral_json(tee))["tcb_info"]  # type: ignore[arg-type]
    doc = json.loads(text)
    edit(doc["tcbLevels"])
    chain = json.loads(pki.collateral_json(tee))["tcb_info_issuer_chain"]  # type: ignore[arg-type]
    return _resign(
        pki, tee, text=json.dumps(doc, separators=(",", ":")), signer_key=pki.tcb_signing.key, chain_pem=chain
    )


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_tcb_levels_are_matched_in_qvl_order_not_json_order(pki: DevPki, tee: str) -> None:
    """Validly signed TCB Info with its levels lowest first (item 15): each platform used to match
    the lowest level it is above (an up-to-date platform was Revoked); levels are sorted as Intel's
    QVL sorts them before matching."""
    coll = _tcb_levels_resigned(pki, tee, lambda levels: levels.reverse())
    make, table = (sgx_quote, SGX_TCB) if tee == "sgx" else (tdx_quote, TDX_TCB)
    for tcb in ("uptodate", "swhardening", "outofdate"):
        quote = make(pki, report_data=RD, tcb=tcb)  # type: ignore[operator]
        result = verify_quote(quote, coll, at=AT, dev_roots=[pki.root_cert])
        assert (result.status, result.advisory_ids) == (table[tcb].status, table[tcb].advisory_ids)  # type: ignore[index]


def test_duplicated_tcb_levels_are_refused(pki: DevPki) -> None:
    """Two levels with the same TCB but different statuses: which one applies would depend on the
    JSON order, so TCB Info holding them is refused, as Intel's QVL refuses it."""
    with pytest.raises(CollateralError, match="same TCB"):
        _tcb_levels_resigned(pki, "sgx", lambda levels: levels.append(dict(levels[0], tcbStatus="OutOfDate")))


@pytest.mark.parametrize("case_id", ["dcap-sgx-phala", "dcap-tdx-phala", "dcap-tdx15ex-phala"])
def test_one_character_in_the_pck_chain_is_a_named_failure(case_id: str) -> None:
    """A one-character change in the quote's PCK leaf whose issuer then fails to decode used to
    raise ValueError out of the verifier (item 3a): now a VerificationError naming pck_chain,
    from the collateral look-up and from the verification alike."""
    c = case(case_id)
    mutated = one_char_undecodable_leaf(read_bytes(c["quote"]))
    coll = QuoteCollateral.from_json(read_text(c["collateral"]))
    with pytest.raises(VerificationError) as info:
        quote_fmspc_and_ca(mutated)
    assert info.value.check == "pck_chain" and "undecodable certificate" in str(info.value)
    with pytest.raises(VerificationError) as info:
        verify_quote(mutated, coll, at=verify_at(c))
    assert info.value.check == "pck_chain"
    verifier = Verifier(dcap_verifiers(StaticCollateral([coll])), clock=lambda: verify_at(c))
    with pytest.raises(VerificationError) as info:
        verifier.verify(coll.tee, mutated, NO_REPORT_DATA)
    assert info.value.check == "pck_chain"
