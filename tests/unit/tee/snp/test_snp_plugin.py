"""The SEV-SNP plugin behind the one verifier: endorsements from the caller, the evidence's
certificate table or a KDS source; detection, binding, digests and Trustee's ``/kbs/v0`` form."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.unit.tee.snp.conftest import ISSUED, SIM_AT, case_chain, case_report
from tests.vectors.corpus import load_cases, read_bytes, verify_at

from keybroker.appraisal.registry import REGISTRY
from keybroker.errors import (
    CollateralError,
    CollateralNotFound,
    EvidenceParseError,
    InvalidInput,
    VerificationError,
)
from keybroker.tee.sim.snp import SnpDevPki, snp_report
from keybroker.tee.snp.certs import spki_sha256
from keybroker.tee.snp.certtable import GUID_ASK, build_cert_table
from keybroker.tee.snp.plugin import TCB_STATUS, SnpVerifier
from keybroker.tee.snp.sources import SnpCrlQuery, SnpCrls, SnpEndorsements, SnpPlatform
from keybroker.tee.trust import EvidenceTrust
from keybroker.tee.verifier import NO_REPORT_DATA, KbsV0Binding, KbsV1Binding, Verifier
from keybroker.wire import binding

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

SNP_CASES = load_cases("snp")
_REASON_CHECK = {
    "VLEK cert expired 2025-12-10": "validity_window",
    "VCEK not signed by ASK / wrong chip": "cert_chain",
    "VCEK of another chip": "report_signature",
    "tampered report": "report_signature",
    "bad signature": "report_signature",
}


def _verifier(pki: SnpDevPki | None = None, **kwargs: Any) -> Verifier:
    roots = () if pki is None else (pki.root_cert,)
    return Verifier([SnpVerifier(roots, **kwargs)], clock=lambda: SIM_AT)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize("case", SNP_CASES, ids=lambda c: c["id"])
def test_the_corpus_through_the_registry(case: dict[str, Any]) -> None:
    """Every vendored SNP case, through the registry's verifier with the certificates in any order.
    The corpus vendors no AMD CRL current at its ``verify_at``: the CRL requirement is waived here
    explicitly (and the next test shows the default refuses them); dev ARK CRLs test the rule."""
    verifier = REGISTRY.verifier(EvidenceTrust(snp_require_crl=False))
    certs = (*reversed(case_chain(case)), read_bytes(case["vcek"]))
    run = lambda: verifier.verify(  # noqa: E731
        "snp", case_report(case), NO_REPORT_DATA, at=verify_at(case), endorsements=SnpEndorsements(certs)
    )
    if case["expect"]["verdict"] == "accept":
        verified = run()
        assert verified.tee == "snp" and not verified.sim
        assert verified.tcb == {"status": TCB_STATUS, "advisory_ids": []}
        assert verified.claims["tee"] == "snp" and verified.claims["product"] == "Milan"
        assert verified.ear_claims()["attester_type"] == "SNP"
    else:
        with pytest.raises(VerificationError) as exc:
            run()
        assert exc.value.check == _REASON_CHECK[case["expect"]["reason"]]


def test_by_default_a_real_report_without_a_crl_of_its_ark_is_refused() -> None:
    case = next(c for c in SNP_CASES if c["id"] == "snp-trustee-milan")
    certs = (*case_chain(case), read_bytes(case["vcek"]))
    with pytest.raises(VerificationError, match="no CRL issued by ARK-Milan was given") as exc:
        REGISTRY.verifier(EvidenceTrust()).verify(
            "snp", case_report(case), NO_REPORT_DATA, at=verify_at(case), endorsements=SnpEndorsements(certs)
        )
    assert exc.value.check == "crl" and "/vcek/v1/Milan/crl" in exc.value.detail


def test_evidence_carrying_its_certificates_verifies_against_the_dev_root_only(genoa_pki: SnpDevPki) -> None:
    made = snp_report(genoa_pki, now=ISSUED)
    evidence = made.report + made.cert_table
    verified = _verifier(genoa_pki).verify("snp", evidence, NO_REPORT_DATA)
    assert verified.sim and verified.detail.report()["root"] == "dev"
    # the same evidence where no dev root is configured: its ARK is not AMD's
    with pytest.raises(VerificationError, match="not signed by a trusted ARK-Genoa") as exc:
        _verifier().verify("snp", evidence, NO_REPORT_DATA)
    assert exc.value.check == "cert_chain"
    # a dev root of another TEE (an Intel-shaped one) is not an ARK and is ignored, not an error
    assert (
        REGISTRY.verifier(EvidenceTrust(dev_roots=(genoa_pki.root_cert,)))
        .verify("snp", evidence, NO_REPORT_DATA, at=SIM_AT)
        .sim
    )


def test_no_certificates_and_no_source_says_so(genoa_pki: SnpDevPki) -> None:
    made = snp_report(genoa_pki, now=ISSUED)
    with pytest.raises(CollateralNotFound, match="carries no certificate table and no endorsement source"):
        _verifier(genoa_pki).verify("snp", made.report, NO_REPORT_DATA)
    # a table without the signing key's certificate is not enough either
    table = build_cert_table([(GUID_ASK, _der(made.chain[0]))])
    with pytest.raises(CollateralNotFound, match="a certificate table without a VCEK"):
        _verifier(genoa_pki).verify("snp", made.report + table, NO_REPORT_DATA)


def test_a_kds_source_is_asked_by_what_the_report_names(genoa_pki: SnpDevPki) -> None:
    made = snp_report(genoa_pki, now=ISSUED)
    asked: list[SnpPlatform] = []

    def source(platform: SnpPlatform) -> SnpEndorsements:
        asked.append(platform)
        return SnpEndorsements(
            (_der(made.signer), *map(_der, made.chain)), (genoa_pki.crl(),), origin="the KDS cache"
        )

    verified = _verifier(genoa_pki, source=source).verify("snp", made.report, NO_REPORT_DATA)
    assert verified.sim and "crl" in verified.checks
    (platform,) = asked
    assert platform.product == "Genoa" and platform.signing_key == "vcek"
    assert platform.chip_id == genoa_pki.chip_id and platform.reported_tcb == made.report[0x180:0x188]
    assert platform.at == SIM_AT
    # the source's certificates are verified like any others: a wrong VCEK fails
    other = snp_report(genoa_pki, now=ISSUED, chip_id=os.urandom(64))
    wrong = _verifier(
        genoa_pki,
        source=lambda p: SnpEndorsements((_der(other.signer), *map(_der, made.chain)), (genoa_pki.crl(),)),
    )
    with pytest.raises(VerificationError) as exc:
        wrong.verify("snp", made.report, NO_REPORT_DATA)
    assert exc.value.check == "report_signature"
    # the evidence's own table wins over the source (which is then not asked)
    asked.clear()
    _verifier(genoa_pki, source=source).verify("snp", made.report + made.cert_table, NO_REPORT_DATA)
    assert asked == []


def test_a_revoked_ask_in_the_sources_crl_is_refused(fresh_genoa_pki: SnpDevPki) -> None:
    made = snp_report(fresh_genoa_pki, now=ISSUED)
    fresh_genoa_pki.revoke_intermediate("vcek", now=ISSUED)
    source = lambda p: SnpEndorsements(  # noqa: E731
        (_der(made.signer), *map(_der, made.chain)), (fresh_genoa_pki.crl(),)
    )
    with pytest.raises(VerificationError, match="is revoked") as exc:
        _verifier(fresh_genoa_pki, source=source).verify("snp", made.report, NO_REPORT_DATA)
    assert exc.value.check == "crl"


def test_the_leaf_is_chosen_by_the_reports_signing_key(genoa_pki: SnpDevPki) -> None:
    vlek = snp_report(genoa_pki, now=ISSUED, signing_key="vlek", mask_chip_id=True)
    vcek = snp_report(genoa_pki, now=ISSUED)
    verifier = _verifier(genoa_pki)
    # the VLEK report with only a VCEK: no leaf of its kind
    with pytest.raises(VerificationError, match="signed by its VLEK .* none of the 1 certificate") as exc:
        verifier.verify(
            "snp", vlek.report, NO_REPORT_DATA, endorsements=SnpEndorsements((_der(vcek.signer),))
        )
    assert exc.value.check == "cert_chain"
    # two VCEKs: refused rather than guessed
    two = SnpEndorsements(
        (_der(vcek.signer), _der(snp_report(genoa_pki, now=ISSUED, chip_id=os.urandom(64)).signer))
    )
    with pytest.raises(VerificationError, match="2 certificates .* are named SEV-VCEK"):
        verifier.verify("snp", vcek.report, NO_REPORT_DATA, endorsements=two)
    # a certificate that does not decode
    with pytest.raises(VerificationError, match="certificate 0 from the caller does not decode"):
        verifier.verify(
            "snp", vcek.report, NO_REPORT_DATA, endorsements=SnpEndorsements((b"\x30\x03\x02\x01\x00",))
        )
    # the VLEK report verifies with its VLEK, the leaf first or last
    verified = verifier.verify(
        "snp",
        vlek.report,
        NO_REPORT_DATA,
        endorsements=SnpEndorsements((*map(_der, vlek.chain), _der(vlek.signer)), (genoa_pki.crl("vlek"),)),
    )
    assert verified.claims["signing_key"] == "vlek"


def test_detection_binding_and_digest(genoa_pki: SnpDevPki) -> None:
    nonce, spki = os.urandom(32), os.urandom(294)
    made = snp_report(genoa_pki, now=ISSUED, report_data=binding.v1_report_data(nonce, spki))
    evidence = made.report + made.cert_table
    verifier = REGISTRY.verifier(EvidenceTrust(dev_roots=(genoa_pki.root_cert,)), clock=lambda: SIM_AT)
    assert verifier.detect([b"junk", evidence]) == ("snp", evidence)
    assert verifier.detect([made.report]) == ("snp", made.report)
    assert verifier.detect([made.report[:-1]]) is None and verifier.detect([evidence + b"\x00" * 8])
    assert verifier.verify("snp", evidence, KbsV1Binding(nonce, spki)).report_data == made.report[0x50:0x90]
    with pytest.raises(VerificationError) as exc:
        verifier.verify("snp", evidence, KbsV1Binding(os.urandom(32), spki))
    assert exc.value.check == "report_data"
    # one report, one digest: with or without the table, and as verified
    digest = verifier.evidence_sha256("snp", made.report)
    assert (
        verifier.evidence_sha256("snp", evidence)
        == digest
        == verifier.verify("snp", evidence, NO_REPORT_DATA).evidence_sha256
    )
    assert verifier.evidence_sha256("snp", b"short") == hashlib.sha256(b"short").hexdigest()  # never fails


def test_kbs_v0_binding(genoa_pki: SnpDevPki) -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}
    bound = KbsV0Binding("n0nce", jwk, "", "sha384")
    made = snp_report(genoa_pki, now=ISSUED, report_data=binding.v0_report_data("n0nce", jwk, "", "sha384"))
    assert _verifier(genoa_pki).verify("snp", made.report + made.cert_table, bound).tee == "snp"


def test_a_malformed_table_or_report_is_a_parse_error(genoa_pki: SnpDevPki) -> None:
    made = snp_report(genoa_pki, now=ISSUED)
    with pytest.raises(EvidenceParseError, match="certificate table"):
        _verifier(genoa_pki).verify("snp", made.report + b"\x01" * 24, NO_REPORT_DATA)
    with pytest.raises(EvidenceParseError, match="1183 bytes"):
        _verifier(genoa_pki).verify("snp", made.report[:-1], NO_REPORT_DATA)


def test_kbs_v0_evidence_in_trustees_form(genoa_pki: SnpDevPki) -> None:
    plugin = SnpVerifier([genoa_pki.root_cert])
    made = snp_report(genoa_pki, now=ISSUED)
    as_array = {
        "attestation_report": list(made.report),
        "cert_chain": [
            {"cert_type": "VCEK", "data": list(_der(made.signer))},
            {"cert_type": "ASK", "data": base64.b64encode(_der(made.chain[0])).decode()},
            {"cert_type": {"OTHER": "0b0f4a68-6a2b-4b8e-9d1c-0e3f5f5a1b2c"}, "data": [1, 2, 3]},
        ],
    }
    evidence = plugin.kbs_v0_evidence(as_array)
    assert evidence[:1184] == made.report
    parsed = plugin.parse(evidence)
    assert parsed.table is not None and parsed.table.vcek == _der(made.signer)
    assert (
        plugin.kbs_v0_evidence(
            {"attestation_report": base64.b64encode(made.report).decode(), "cert_chain": None}
        )
        == made.report
    )
    bad: list[tuple[dict[str, Any], str]] = [
        ({"attestation_report": "%%%"}, "attestation_report"),
        ({"attestation_report": list(made.report[:-1])}, "attestation_report"),
        ({"attestation_report": [256] * 1184}, "attestation_report"),
        ({"attestation_report": {"version": 2}}, "attestation_report"),
        ({"attestation_report": list(made.report), "cert_chain": {}}, "cert_chain"),
        (
            {"attestation_report": list(made.report), "cert_chain": [{"cert_type": "PEK", "data": []}]},
            "cert_chain.0.cert_type",
        ),
        (
            {"attestation_report": list(made.report), "cert_chain": [{"cert_type": "VCEK", "data": []}]},
            "cert_chain.0.data",
        ),
        (
            {"attestation_report": list(made.report), "cert_chain": [{"cert_type": "ARK", "data": [1]}] * 2},
            "cert_chain.1",
        ),
        ({"attestation_report": list(made.report), "quote": "x"}, "primary_evidence"),
    ]
    for doc, field in bad:
        with pytest.raises(InvalidInput) as exc:
            plugin.kbs_v0_evidence(doc)
        assert str(exc.value.extra["field"]).endswith(field), (doc.keys(), exc.value.extra)


def test_endorsements_json(genoa_pki: SnpDevPki) -> None:
    plugin = SnpVerifier([genoa_pki.root_cert])
    made = snp_report(genoa_pki, now=ISSUED)
    pem_chain = (genoa_pki.directory / "cert_chain.pem").read_text()
    crl_pem = x509.load_der_x509_crl(genoa_pki.crl()).public_bytes(Encoding.PEM).decode()
    text = json.dumps(
        {"certificates": [pem_chain, base64.b64encode(_der(made.signer)).decode()], "crls": [crl_pem]}
    )
    found = plugin.endorsements(text)
    assert len(found.certificates) == 3 and found.crls == (genoa_pki.crl(),)
    verified = _verifier(genoa_pki).verify("snp", made.report, NO_REPORT_DATA, endorsements=found)
    assert "crl" in verified.checks and verified.sim
    for bad in (
        '{"certs": []}',
        "[]",
        '{"certificates": "x"}',
        '{"certificates": ["%%"]}',
        '{"certificates": [], "crls": ["-----BEGIN X509 CRL-----\\nAA\\n-----END X509 CRL-----"]}',
    ):
        with pytest.raises(CollateralError):
            plugin.endorsements(bad)


def test_the_ear_claims_and_report(genoa_pki: SnpDevPki) -> None:
    made = snp_report(genoa_pki, now=ISSUED, host_data=b"\x11" * 32, guest_svn=7, vmpl=2)
    verified = _verifier(genoa_pki).verify("snp", made.report + made.cert_table, NO_REPORT_DATA)
    ear = verified.ear_claims()
    assert ear["snp_host_data"] == "11" * 32 and ear["snp_guest_svn"] == 7 and ear["snp_vmpl"] == 2
    assert ear["snp_is_debuggable"] is False and ear["snp_product"] == "Genoa"
    report = verified.report()
    assert report["status"] == TCB_STATUS and report["claims"]["host_data"] == "11" * 32
    assert dict(verified.summary())["TEE"] == "SNP (report v3, Genoa)"


def test_the_trusted_crl_source_is_asked_for_every_chain_and_must_hold_the_chains_side(
    fresh_genoa_pki: SnpDevPki,
) -> None:
    """The CRL source is asked by the verified chain's ARK key, product and side whatever carried
    the certificates; its CRLs apply over the table's; a CRL of the other side (which cannot list
    an ASK) or one in the table does not satisfy the requirement."""
    pki = fresh_genoa_pki
    made = snp_report(pki, now=ISSUED)  # the table carries the VCEK, ASK, ARK and the current CRL
    asked: list[SnpCrlQuery] = []
    held: dict[str, tuple[bytes, ...]] = {"vcek": (), "vlek": ()}

    def source(query: SnpCrlQuery) -> SnpCrls:
        asked.append(query)
        other = "vlek" if query.signing_key == "vcek" else "vcek"
        return SnpCrls(side=held[query.signing_key], other=held[other], held="test CRLs", fix="fetch it")

    verifier = _verifier(pki, crl_source=source)
    evidence = made.report + made.cert_table
    # nothing held for the VCEK side: refused, though the table carries a current CRL
    held["vlek"] = (pki.crl("vlek"),)
    with pytest.raises(
        CollateralNotFound, match=r"no VCEK CRL \(of ASKs\) Genoa of the simulator's dev ARK"
    ) as exc:
        verifier.verify("snp", evidence, NO_REPORT_DATA)
    assert exc.value.extra["check"] == "crl" and "fetch it" in exc.value.detail
    (query,) = asked
    assert (query.product, query.signing_key, query.at) == ("Genoa", "vcek", SIM_AT)
    assert query.ark_spki_sha256 == spki_sha256(pki.root_cert)
    # held: verifies; then the held CRL revokes the ASK while the table's still does not list it
    held["vcek"] = (pki.crl("vcek"),)
    assert verifier.verify("snp", evidence, NO_REPORT_DATA).sim
    # the one held has expired by then (the table's too): refused as missing, saying it is stale
    late = SIM_AT + datetime.timedelta(days=40)
    with pytest.raises(
        CollateralNotFound, match="no current VCEK CRL .* is held .the one held is not valid at"
    ):
        verifier.verify("snp", evidence, NO_REPORT_DATA, at=late)
    pki.revoke_intermediate("vcek", now=ISSUED)
    held["vcek"] = (pki.crl("vcek"),)
    with pytest.raises(VerificationError, match="is revoked") as revoked:
        verifier.verify("snp", evidence, NO_REPORT_DATA)
    assert revoked.value.check == "crl"
    # the requirement off: nothing held still verifies (what is held is applied all the same)
    held["vcek"] = ()
    assert _verifier(pki, crl_source=source, require_crl=False).verify("snp", evidence, NO_REPORT_DATA).sim
