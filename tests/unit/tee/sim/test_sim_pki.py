"""The dev PKI: files, permissions, certificate profile, SGX extension, signed collateral, CRLs."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path
from typing import Literal

import dcap_qvl  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from keybroker.tee.sim import (
    PLATFORM_SGX,
    PLATFORM_TDX,
    QE_IDENTITY,
    SGX_TCB,
    TCB_CHOICES,
    TD_QE_IDENTITY,
    TDX_TCB,
    DevPki,
    TcbChoice,
    sgx_quote,
    tdx_quote,
)

COLLATERAL_KEYS = [
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
]


Tee = Literal["sgx", "tdx"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verify_raw_sig(cert: x509.Certificate, data: bytes, sig_hex: str) -> None:
    raw = bytes.fromhex(sig_hex)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(der, data, ec.ECDSA(hashes.SHA256()))


def test_private_keys_are_0600_and_directories_0700(pki: DevPki) -> None:
    keys = sorted(pki.directory.rglob("*.key"))
    # root, 2 PCK CAs, TCB signing; per platform: AK + 4 PCK keys
    assert len(keys) == 4 + 2 * 5
    for key in keys:
        assert _mode(key) == 0o600, key
    for d in [pki.directory, *[p for p in pki.directory.rglob("*") if p.is_dir()]]:
        assert _mode(d) == 0o700, d
    for pem in pki.directory.rglob("*.pem"):
        assert b"PRIVATE KEY" not in pem.read_bytes(), pem


def test_create_tightens_permissions_of_existing_files(tmp_path: Path, issued: dt.datetime) -> None:
    out = tmp_path / "pki"
    out.mkdir(mode=0o755)
    (out / "root.key").write_text("old")
    (out / "root.key").chmod(0o644)
    DevPki.create(out, now=issued)
    assert _mode(out) == 0o700
    assert _mode(out / "root.key") == 0o600


def test_load_round_trips(pki: DevPki, at_secs: int) -> None:
    loaded = DevPki.load(pki.directory)
    assert loaded.root_fingerprint == pki.root_fingerprint
    assert set(loaded.platforms) == {PLATFORM_SGX, PLATFORM_TDX}
    for name, p in pki.platforms.items():
        q = loaded.platforms[name]
        assert (q.tee, q.ca, q.fmspc, q.ppid, q.qe_id, q.platform_instance_id) == (
            p.tee,
            p.ca,
            p.fmspc,
            p.ppid,
            p.qe_id,
            p.platform_instance_id,
        )
        assert q.attestation_key.private_numbers() == p.attestation_key.private_numbers()
        for c in TCB_CHOICES:
            assert q.pck[c].cert == p.pck[c].cert
    # A quote made from the loaded PKI verifies against the collateral written at creation.
    coll = dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json("sgx"))
    report = dcap_qvl.verify_with_root_ca(
        sgx_quote(loaded, report_data=bytes(64)), coll, pki.root_der, at_secs
    )
    assert report.status == "UpToDate"


def test_load_rejects_a_directory_that_is_not_a_dev_pki(tmp_path: Path) -> None:
    (tmp_path / "pki.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="does not hold a keybroker-dev-pki/1"):
        DevPki.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        DevPki.load(tmp_path / "missing")


def test_subject_names_say_dev_and_not_for_production(pki: DevPki) -> None:
    certs = [pki.root.cert, pki.processor_ca.cert, pki.platform_ca.cert, pki.tcb_signing.cert]
    certs += [p.pck[c].cert for p in pki.platforms.values() for c in TCB_CHOICES]
    for cert in certs:
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert isinstance(cn, str)
        assert cn.startswith("keybroker DEV SGX ") and cn.endswith("NOT FOR PRODUCTION"), cn
    root_cn = pki.root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert root_cn == "keybroker DEV SGX Root CA - NOT FOR PRODUCTION"


def test_chain_shape_and_validity(pki: DevPki, issued: dt.datetime) -> None:
    root = pki.root.cert
    assert root.issuer == root.subject
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    for ca in (pki.processor_ca.cert, pki.platform_ca.cert):
        ca.verify_directly_issued_by(root)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    pki.tcb_signing.cert.verify_directly_issued_by(root)
    assert not pki.tcb_signing.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for p in pki.platforms.values():
        issuer = pki.processor_ca.cert if p.ca == "processor" else pki.platform_ca.cert
        for c in TCB_CHOICES:
            leaf = p.pck[c].cert
            leaf.verify_directly_issued_by(issuer)
            ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
            assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
            assert leaf.not_valid_before_utc == issued
            assert leaf.not_valid_after_utc > issued + dt.timedelta(days=9 * 365)
    assert root.not_valid_before_utc == issued
    assert root.not_valid_after_utc > issued + dt.timedelta(days=25 * 365)
    assert pki.platforms[PLATFORM_SGX].ca == "processor"
    assert pki.platforms[PLATFORM_TDX].ca == "platform"


@pytest.mark.parametrize("name", [PLATFORM_SGX, PLATFORM_TDX])
@pytest.mark.parametrize("tcb", TCB_CHOICES)
def test_pck_sgx_extension_has_the_real_format(pki: DevPki, name: str, tcb: TcbChoice) -> None:
    p = pki.platforms[name]
    level = p.tcb_level(tcb)
    ext = dcap_qvl.parse_pck_extension_from_pem(pki.pck_chain_pem(p, tcb))
    assert ext.ppid == p.ppid
    assert ext.cpu_svn == level.cpusvn
    assert ext.pce_svn == level.pcesvn
    assert ext.pce_id == p.pce_id == b"\x00\x00"
    assert ext.fmspc == p.fmspc
    assert ext.sgx_type == (0 if name == PLATFORM_SGX else 1)
    for i in range(16):
        comp = ext.get_value(f"1.2.840.113741.1.13.1.2.{i + 1}")
        assert comp is not None and int.from_bytes(comp, "big") == level.cpusvn[i]
    if name == PLATFORM_TDX:
        assert ext.platform_instance_id == p.platform_instance_id
        assert p.platform_instance_id is not None and len(p.platform_instance_id) == 16
        for i in (1, 2, 3):  # dynamicPlatform, cachedKeys, SMTEnabled
            assert ext.get_value(f"1.2.840.113741.1.13.1.7.{i}") == b"\xff"
    else:
        assert ext.platform_instance_id is None
        assert ext.get_value("1.2.840.113741.1.13.1.7") is None


def test_quote_parser_sees_fmspc_and_ca(pki: DevPki) -> None:
    sgx = dcap_qvl.parse_quote(sgx_quote(pki, report_data=bytes(64)))
    tdx = dcap_qvl.parse_quote(tdx_quote(pki, report_data=bytes(64)))
    assert (sgx.quote_type(), sgx.fmspc(), sgx.ca()) == ("SGX", "00DE5C000000", "processor")
    assert (tdx.quote_type(), tdx.fmspc(), tdx.ca()) == ("TDX", "00DE7D000000", "platform")


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_collateral_file_has_the_corpus_form(pki: DevPki, tee: Tee, issued: dt.datetime) -> None:
    coll = json.loads(pki.collateral_json(tee))
    assert list(coll) == COLLATERAL_KEYS
    for field in ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"):
        bytes.fromhex(coll[field])
    for field in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
        chain = x509.load_pem_x509_certificates(coll[field].encode())
        assert len(chain) == 2 and chain[1] == pki.root.cert
    tcb_chain = x509.load_pem_x509_certificates(coll["tcb_info_issuer_chain"].encode())
    assert tcb_chain[0] == pki.tcb_signing.cert
    _verify_raw_sig(pki.tcb_signing.cert, coll["tcb_info"].encode(), coll["tcb_info_signature"])
    _verify_raw_sig(pki.tcb_signing.cert, coll["qe_identity"].encode(), coll["qe_identity_signature"])

    tcb_info = json.loads(coll["tcb_info"])
    assert tcb_info["id"] == tee.upper() and tcb_info["version"] == 3
    assert tcb_info["issueDate"] == issued.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert tcb_info["nextUpdate"] == (issued + dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    platform = pki.platforms[PLATFORM_SGX if tee == "sgx" else PLATFORM_TDX]
    assert tcb_info["fmspc"] == platform.fmspc.hex().upper()
    levels = SGX_TCB if tee == "sgx" else TDX_TCB
    assert [lvl["tcbStatus"] for lvl in tcb_info["tcbLevels"]] == [levels[c].status for c in TCB_CHOICES]
    assert [lvl["tcbStatus"] for lvl in tcb_info["tcbLevels"]] == [
        "UpToDate",
        "SWHardeningNeeded",
        "OutOfDate",
        "Revoked",
    ]
    assert [lvl.get("advisoryIDs", []) for lvl in tcb_info["tcbLevels"]] == [
        list(levels[c].advisory_ids) for c in TCB_CHOICES
    ]
    assert all(len(lvl["tcb"]["sgxtcbcomponents"]) == 16 for lvl in tcb_info["tcbLevels"])
    if tee == "tdx":
        assert all(len(lvl["tcb"]["tdxtcbcomponents"]) == 16 for lvl in tcb_info["tcbLevels"])
        assert [m["id"] for m in tcb_info["tdxModuleIdentities"]] == ["TDX_01"]

    qe = json.loads(coll["qe_identity"])
    expected_qe = QE_IDENTITY if tee == "sgx" else TD_QE_IDENTITY
    assert (qe["id"], qe["version"], qe["isvprodid"]) == (expected_qe.id, 2, expected_qe.isvprodid)
    assert qe["mrsigner"] == expected_qe.mrsigner.hex().upper()
    assert qe["tcbLevels"][0] == {
        "tcb": {"isvsvn": expected_qe.isvsvn},
        "tcbDate": qe["tcbLevels"][0]["tcbDate"],
        "tcbStatus": "UpToDate",
    }

    pck_crl = x509.load_der_x509_crl(bytes.fromhex(coll["pck_crl"]))
    ca = pki.processor_ca.cert if platform.ca == "processor" else pki.platform_ca.cert
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert pck_crl.issuer == ca.subject and pck_crl.is_signature_valid(ca_key)
    assert pck_crl.next_update_utc == issued + dt.timedelta(days=30)
    root_crl = x509.load_der_x509_crl(bytes.fromhex(coll["root_ca_crl"]))
    assert root_crl.issuer == pki.root.cert.subject and len(root_crl) == 0
    # dcap-qvl's own parser takes the file as is.
    assert dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json(tee)).tcb_info == coll["tcb_info"]


@pytest.mark.parametrize(
    ("fname", "field", "tee"),
    [
        ("tcbinfo-sgx.json", "tcbInfo", "sgx"),
        ("tcbinfo-tdx.json", "tcbInfo", "tdx"),
        ("qe-identity.json", "enclaveIdentity", "sgx"),
        ("td-qe-identity.json", "enclaveIdentity", "tdx"),
    ],
)
def test_pcs_form_files_hold_the_same_signed_bytes(pki: DevPki, fname: str, field: str, tee: Tee) -> None:
    text = (pki.directory / fname).read_text()
    doc = json.loads(text)
    assert set(doc) == {field, "signature"}
    coll = json.loads(pki.collateral_json(tee))
    key = "tcb_info" if field == "tcbInfo" else "qe_identity"
    assert coll[key] in text  # the exact signed substring, not a re-serialisation
    assert json.loads(coll[key]) == doc[field]
    assert coll[key + "_signature"] == doc["signature"]


def test_revoke_pck_rewrites_the_crl_and_collateral(fresh_pki: DevPki, issued: dt.datetime) -> None:
    later = issued + dt.timedelta(minutes=5)
    before = x509.load_der_x509_crl((fresh_pki.directory / "pck-processor-crl.der").read_bytes())
    assert len(before) == 0
    added = fresh_pki.revoke_pck(PLATFORM_SGX, now=later)
    sgx = fresh_pki.platforms[PLATFORM_SGX]
    assert sorted(added) == sorted(sgx.pck[c].cert.serial_number for c in TCB_CHOICES)
    crl = x509.load_der_x509_crl((fresh_pki.directory / "pck-processor-crl.der").read_bytes())
    assert {r.serial_number for r in crl} == set(added)
    assert crl.last_update_utc == later
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    old_number = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == old_number + 1
    coll = json.loads(fresh_pki.collateral_json("sgx"))
    assert coll["pck_crl"] == crl.public_bytes(serialization.Encoding.DER).hex()
    # The platform CA's CRL is untouched; revoking again adds nothing.
    assert len(x509.load_der_x509_crl((fresh_pki.directory / "pck-platform-crl.der").read_bytes())) == 0
    assert fresh_pki.revoke_pck(PLATFORM_SGX, now=later) == []
    assert DevPki.load(fresh_pki.directory).revoked_serials("processor") == fresh_pki.revoked_serials(
        "processor"
    )


def test_revoke_a_single_tcb_level(fresh_pki: DevPki) -> None:
    added = fresh_pki.revoke_pck(PLATFORM_TDX, tcb="outofdate")
    assert added == [fresh_pki.platforms[PLATFORM_TDX].pck["outofdate"].cert.serial_number]
    with pytest.raises(KeyError, match="no simulated platform 'nope'"):
        fresh_pki.revoke_pck("nope")


def test_create_requires_an_aware_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DevPki.create(tmp_path / "pki", now=dt.datetime(2026, 1, 1))


def test_no_temporary_files_are_left_behind(fresh_pki: DevPki) -> None:
    fresh_pki.revoke_pck(PLATFORM_SGX)
    assert [p for p in fresh_pki.directory.rglob("*") if p.name.endswith(".tmp")] == []


def test_reissue_collateral_extends_the_window(fresh_pki: DevPki, issued: dt.datetime) -> None:
    later = issued + dt.timedelta(days=40)
    quote = sgx_quote(fresh_pki, report_data=bytes(64))
    old = dcap_qvl.QuoteCollateralV3.from_json(fresh_pki.collateral_json("sgx"))
    with pytest.raises(ValueError, match="Expired"):
        dcap_qvl.verify_with_root_ca(quote, old, fresh_pki.root_der, int(later.timestamp()))
    fresh_pki.revoke_pck(PLATFORM_TDX, tcb="uptodate", now=issued)
    fresh_pki.reissue_collateral(now=later)
    reloaded = DevPki.load(fresh_pki.directory)
    new = dcap_qvl.QuoteCollateralV3.from_json(reloaded.collateral_json("sgx"))
    assert (
        dcap_qvl.verify_with_root_ca(quote, new, reloaded.root_der, int(later.timestamp())).status
        == "UpToDate"
    )
    tcb_info = json.loads(json.loads(reloaded.collateral_json("tdx"))["tcb_info"])
    assert tcb_info["issueDate"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
    crl = x509.load_der_x509_crl((fresh_pki.directory / "pck-platform-crl.der").read_bytes())
    assert crl.last_update_utc == later
    assert [r.serial_number for r in crl] == reloaded.revoked_serials("platform") != []  # revocations kept
    assert reloaded.root_fingerprint == fresh_pki.root_fingerprint


def test_load_or_create(tmp_path: Path, issued: dt.datetime) -> None:
    created = DevPki.load_or_create(tmp_path / "pki", now=issued)
    again = DevPki.load_or_create(tmp_path / "pki", now=issued + dt.timedelta(days=1))
    assert again.root_fingerprint == created.root_fingerprint
