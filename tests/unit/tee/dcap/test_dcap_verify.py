"""verify_quote beyond the corpus: trust roots (dev simulator), revocation, collateral PCK chains, API edges."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from tests.vectors.corpus import case, read_bytes, read_text, verify_at

from keybroker.errors import CollateralError, EvidenceParseError, VerificationError
from keybroker.tee.dcap import INTEL_SGX_ROOT_CA, QuoteCollateral, quote_fmspc_and_ca, verify_quote
from keybroker.tee.dcap.claims import SgxClaims, TdxClaims
from keybroker.tee.sim import SGX_TCB, TDX_TCB, DevPki, sgx_quote, tdx_quote

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
