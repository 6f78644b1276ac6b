"""The SEV-SNP simulator: its dev PKI files, AMD's shape, derived VCEKs, and reports that verify only with its root."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from keybroker.errors import VerificationError
from keybroker.tee.sim.snp import DEFAULT_MEASUREMENT, DEFAULT_TCB, SnpDevPki, snp_report
from keybroker.tee.snp import load_certificate_ders, parse_cert_table, parse_report, verify_report
from keybroker.tee.snp.abi import Tcb
from keybroker.tee.snp.certs import AMD_LOCATION, ARK_SPKI_SHA256, spki_sha256

ISSUED = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
AT = ISSUED + dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def milan(tmp_path_factory: pytest.TempPathFactory) -> SnpDevPki:
    return SnpDevPki.create(tmp_path_factory.mktemp("snp-sim") / "milan", product="Milan", now=ISSUED)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_directory_layout_and_modes(milan: SnpDevPki) -> None:
    d = milan.directory
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("ark.key", "ask.key", "asvk.key", "chip.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    for name in (
        "ark.pem",
        "ask.pem",
        "asvk.pem",
        "cert_chain.pem",
        "vlek_cert_chain.pem",
        "vcek-crl.der",
        "vlek-crl.der",
    ):
        assert (d / name).is_file(), name
    manifest = json.loads((d / "snp-pki.json").read_text())
    assert manifest["format"] == "keybroker-snp-dev-pki/1" and manifest["product"] == "Milan"
    assert "NOT FOR PRODUCTION" in manifest["warning"]
    assert manifest["root_sha256"] == milan.root_fingerprint
    # KDS cert_chain form: ASK then ARK.
    chain = load_certificate_ders((d / "cert_chain.pem").read_bytes())
    assert chain == tuple(c.public_bytes(Encoding.DER) for c in milan.chain("vcek"))


def test_the_pki_has_amds_shape_but_not_amds_keys_or_names(milan: SnpDevPki) -> None:
    ark, ask, asvk = milan.ark.cert, milan.ask.cert, milan.asvk.cert
    assert (_cn(ark), _cn(ask), _cn(asvk)) == ("ARK-Milan", "SEV-Milan", "SEV-VLEK-Milan")
    for cert in (ark, ask, asvk):
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
        assert "NOT FOR PRODUCTION" in cert.subject.rfc4514_string()
        located = tuple(
            sorted(
                (a.rfc4514_attribute_name, str(a.value)) for a in cert.subject if a.oid != NameOID.COMMON_NAME
            )
        )
        assert located != AMD_LOCATION
    assert spki_sha256(ark) not in ARK_SPKI_SHA256.values()
    ask.verify_directly_issued_by(ark)
    ark.verify_directly_issued_by(ark)


def test_vceks_are_derived_per_chip_and_tcb(milan: SnpDevPki) -> None:
    tcb = DEFAULT_TCB["Milan"]
    cert, key = milan.signer(tcb, now=ISSUED)
    again, key2 = milan.signer(tcb, now=ISSUED)
    assert cert == again and key.private_numbers() == key2.private_numbers()
    # A fresh load reads the issued certificate back and derives the same key.
    loaded = SnpDevPki.load(milan.directory)
    cert3, key3 = loaded.signer(tcb, now=ISSUED)
    assert cert3 == cert and key3.private_numbers() == key.private_numbers()
    other_tcb, _ = milan.signer(Tcb(4, 0, 25, 219), now=ISSUED)
    other_chip, _ = milan.signer(tcb, chip_id=bytes(range(64)), now=ISSUED)
    keys = {
        c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        for c in (cert, other_tcb, other_chip)
    }
    assert len(keys) == 3
    assert _cn(cert) == "SEV-VCEK" and isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    ext = {e.oid.dotted_string: e.value for e in cert.extensions}
    assert ext["1.3.6.1.4.1.3704.1.4"].value == milan.chip_id  # type: ignore[attr-defined]
    assert ext["1.3.6.1.4.1.3704.1.2"].value == b"\x16\x08Milan-B0"  # type: ignore[attr-defined]
    assert ext["1.3.6.1.4.1.3704.1.3.3"].value == b"\x02\x01\x18"  # type: ignore[attr-defined]


def test_reports_carry_the_chosen_fields_and_verify(milan: SnpDevPki) -> None:
    ev = snp_report(milan, report_data=b"\x07" * 64, measurement=b"\x01" * 48, vmpl=1, guest_svn=3, now=AT)
    r = parse_report(ev.report)
    assert r.version == 3 and r.cpuid_product == "Milan" and r.signing_key == "vcek"
    assert (
        r.report_data == b"\x07" * 64 and r.measurement == b"\x01" * 48 and r.vmpl == 1 and r.guest_svn == 3
    )
    assert r.chip_id == milan.chip_id and r.report_id_ma == b"\xff" * 32
    assert r.reported_tcb == DEFAULT_TCB["Milan"].encode("Milan")
    verified = verify_report(
        ev.report,
        vcek_or_vlek=ev.signer,
        chain=ev.chain,
        crls=[milan.crl("vcek")],
        at=AT,
        dev_roots=[milan.root_cert],
    )
    assert verified.sim and verified.product == "Milan" and verified.claims.measurement == b"\x01" * 48
    default = parse_report(snp_report(milan, now=AT).report)
    assert default.measurement == DEFAULT_MEASUREMENT and default.report_data == bytes(64)
    assert default.report_id != r.report_id  # fresh per report, like a new guest


def test_reports_are_refused_without_the_dev_root(milan: SnpDevPki) -> None:
    ev = snp_report(milan, now=AT)
    with pytest.raises(VerificationError) as exc:
        verify_report(ev.report, vcek_or_vlek=ev.signer, chain=ev.chain, at=AT)
    assert exc.value.check == "cert_chain"


def test_the_extended_report_table(milan: SnpDevPki) -> None:
    ev = snp_report(milan, signing_key="vlek", now=AT)
    table = parse_cert_table(ev.cert_table)
    assert table.vlek == ev.signer.public_bytes(Encoding.DER)
    assert table.ask == milan.asvk.cert.public_bytes(Encoding.DER)  # the ASVK shares the ASK GUID
    assert table.ark == milan.ark.cert.public_bytes(Encoding.DER)


def test_revoking_the_ask(tmp_path: Path, milan: SnpDevPki) -> None:
    import shutil

    shutil.copytree(milan.directory, tmp_path / "p")
    pki = SnpDevPki.load(tmp_path / "p")
    ev = snp_report(pki, now=AT)
    before = x509.load_der_x509_crl(pki.crl("vcek"))
    serial = pki.revoke_intermediate("vcek", now=AT)
    crl = x509.load_der_x509_crl(pki.crl("vcek"))
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
        before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    )
    with pytest.raises(VerificationError, match="revoked") as exc:
        verify_report(
            ev.report,
            vcek_or_vlek=ev.signer,
            chain=ev.chain,
            at=AT,
            dev_roots=[pki.root_cert],
            crls=[pki.crl()],
        )
    assert exc.value.check == "crl"
    # The revocation survives a reload and a reissue.
    reloaded = SnpDevPki.load(tmp_path / "p")
    reloaded.reissue_crls(now=AT)
    assert x509.load_der_x509_crl(reloaded.crl()).get_revoked_certificate_by_serial_number(serial) is not None
    assert (
        x509.load_der_x509_crl(reloaded.crl("vlek")).get_revoked_certificate_by_serial_number(serial) is None
    )


def test_bad_inputs(milan: SnpDevPki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="report_data must be 64 bytes"):
        snp_report(milan, report_data=b"short")
    with pytest.raises(ValueError, match="version 6"):
        snp_report(milan, version=6)
    with pytest.raises(ValueError, match="not one of"):
        SnpDevPki.create(tmp_path / "x", product="Venice")  # type: ignore[arg-type]
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "snp-pki.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="does not hold"):
        SnpDevPki.load(tmp_path / "y")
    assert SnpDevPki.load_or_create(milan.directory).root_fingerprint == milan.root_fingerprint


def _number(der: bytes) -> int:
    return x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_renew_crls_reissues_only_what_runs_out_and_keeps_revocations(
    tmp_path: Path, milan: SnpDevPki
) -> None:
    import shutil

    shutil.copytree(milan.directory, tmp_path / "p")
    d = tmp_path / "p"
    pki = SnpDevPki.load(d)
    serial = pki.revoke_intermediate("vlek", now=ISSUED)
    held = {kind: pki.crl(kind) for kind in ("vcek", "vlek")}
    # current for the coming week: nothing written
    assert not SnpDevPki.renew_crls(d, now=ISSUED + dt.timedelta(days=22))
    assert {kind: pki.crl(kind) for kind in ("vcek", "vlek")} == held
    # within the week before nextUpdate (ISSUED + 30 days); then past the new one's (day 54)
    for days in (24, 60):
        at = ISSUED + dt.timedelta(days=days)
        before = {kind: _number(pki.crl(kind)) for kind in ("vcek", "vlek")}
        assert SnpDevPki.renew_crls(d, now=at)
        for kind in ("vcek", "vlek"):
            crl = x509.load_der_x509_crl(pki.crl(kind))
            assert crl.last_update_utc == at and crl.next_update_utc == at + dt.timedelta(days=30)
            assert _number(pki.crl(kind)) == before[kind] + 1
        assert x509.load_der_x509_crl(pki.crl("vlek")).get_revoked_certificate_by_serial_number(serial)
        assert not SnpDevPki.renew_crls(d, now=at)  # done: the next call is a no-op
    # a CRL that is not there was not run out but removed: left for the verifier to name
    pki.crl_path("vcek").unlink()
    assert not SnpDevPki.renew_crls(d, now=ISSUED + dt.timedelta(days=90))
    assert not pki.crl_path("vcek").exists()


def test_a_revocation_by_another_instance_is_never_dropped(tmp_path: Path, milan: SnpDevPki) -> None:
    """Two processes share a dev PKI (a dev server and a tool beside it): each change of the CRLs
    re-reads the revocations from the directory, so one instance's re-issue keeps what another
    revoked after it was loaded."""
    import shutil

    shutil.copytree(milan.directory, tmp_path / "p")
    server = SnpDevPki.load(tmp_path / "p")
    tool = SnpDevPki.load(tmp_path / "p")
    serial = tool.revoke_intermediate("vcek", now=AT)
    server.reissue_crls(now=AT)
    crl = x509.load_der_x509_crl(server.crl("vcek"))
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert json.loads((tmp_path / "p" / "snp-pki.json").read_text())["revoked"]["vcek"] == [f"{serial:x}"]


def test_the_table_carries_the_crl_only_while_it_is_current(milan: SnpDevPki) -> None:
    """A host hands its guest the ARK's current CRL; an expired one is left out (a verifier refuses
    a CRL that is not current, whoever holds a fresher one)."""
    assert parse_cert_table(snp_report(milan, now=AT).cert_table).crl == milan.crl("vcek")
    late = ISSUED + dt.timedelta(days=31)
    assert parse_cert_table(snp_report(milan, now=late).cert_table).crl is None
