"""The AMD KDS-compatible endpoints (``/vcek/v1/...``, ``/vlek/v1/...``), on SQLite and PostgreSQL:
what they serve verifies the real reports; AMD's before a simulator's; 400 for a malformed product,
hwID or SPL; 404 naming what is missing (and no other chip)."""

from __future__ import annotations

import re

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from tests.helpers.snp_kds import (
    TURIN_VCEK,
    VCEK_CASES,
    VLEK_CASE,
    SimKds,
    real_case,
    real_chains,
    real_items,
    sim_kds,
)
from tests.vectors.corpus import read_bytes

from keybroker.api.services import Services
from keybroker.collateral import kds
from keybroker.collateral.kds_store import KdsStore
from keybroker.tee.snp.abi import parse_report
from keybroker.tee.snp.certs import load_certificate_ders
from keybroker.tee.snp.verify import verify_report

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimKds:
    return sim_kds(tmp_path_factory.mktemp("kds-api-sim") / "genoa")


@pytest.fixture
def store(services: Services) -> KdsStore:
    store = KdsStore(services.db)
    store.import_items(real_items(), source="test")
    return store


def _sim_items(sim: SimKds) -> list[kds.SnpItem]:
    roots = [sim.pki.root_cert]
    chains = [
        i
        for side in ("vcek", "vlek")
        for i in kds.chain_items(sim.files[f"/{side}/v1/Genoa/cert_chain"], dev_roots=roots)
    ]
    crls = [kds.crl_item(sim.pki.crl(s), signing_key=s, dev_roots=roots) for s in ("vcek", "vlek")]  # type: ignore[arg-type]
    vcek = kds.vcek_item(next(v for k, v in sim.files.items() if "?" in k), chains=chains, dev_roots=roots)
    return [*chains, *crls, vcek]


def test_real_reports_verify_with_what_keybroker_serves(client: TestClient, store: KdsStore) -> None:
    """A guest's view: ask as one asks AMD's KDS, verify the report with what comes back."""
    for case_id in VCEK_CASES:
        c = real_case(case_id)
        chain = client.get("/vcek/v1/Milan/cert_chain")
        assert chain.status_code == 200 and chain.headers["content-type"] == "application/x-pem-file"
        assert chain.headers["cache-control"] == "public, max-age=3600"
        hwid = parse_report(c.report).chip_id
        vcek = client.get(f"/vcek/v1/Milan/{hwid.hex()}", params=kds.vcek_params("Milan", c.reported_tcb))
        assert vcek.status_code == 200 and vcek.headers["content-type"] == "application/pkix-cert"
        assert vcek.content == c.signer  # byte for byte what AMD issued
        verified = verify_report(
            c.report,
            vcek_or_vlek=vcek.content,
            chain=load_certificate_ders(chain.content),
            at=c.at,
            require_crl=False,  # the corpus keeps no AMD CRL of the report's time
        )
        assert verified.product == "Milan" and verified.root == "amd"
    v = real_case(VLEK_CASE)
    vlek_chain = client.get("/vlek/v1/Milan/cert_chain")
    assert vlek_chain.status_code == 200
    asvk = x509.load_pem_x509_certificates(vlek_chain.content)[0]
    assert asvk.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "SEV-VLEK-Milan"
    chain_ders = load_certificate_ders(vlek_chain.content)
    verify_report(v.report, vcek_or_vlek=v.signer, chain=chain_ders, at=v.at, require_crl=False)  # as above
    # Turin: an 8-byte hwID and fmcSPL
    (turin,) = kds.snp_file_items(read_bytes(TURIN_VCEK))
    assert turin.hwid is not None and turin.tcb is not None
    r = client.get(f"/vcek/v1/Turin/{turin.hwid.hex().upper()}", params=kds.vcek_params("Turin", turin.tcb))
    assert r.status_code == 200 and r.content == turin.content


def test_crls_and_amd_before_dev(client: TestClient, services: Services, sim: SimKds) -> None:
    store = KdsStore(services.db)
    store.import_items(_sim_items(sim), source="sim")
    for side in ("vcek", "vlek"):
        r = client.get(f"/{side}/v1/Genoa/crl")
        assert r.status_code == 200 and r.headers["content-type"] == "application/pkix-crl"
        assert r.content == sim.pki.crl(side)  # type: ignore[arg-type]
    assert client.get("/vcek/v1/Genoa/cert_chain").content == sim.files["/vcek/v1/Genoa/cert_chain"]
    # AMD's Genoa chain arrives (older than the simulator's): it is served from then on
    store.import_items([i for i in real_chains() if i.product == "Genoa"], source="amd")
    served = x509.load_pem_x509_certificates(client.get("/vcek/v1/Genoa/cert_chain").content)
    assert [c.subject.rfc4514_string() for c in served][0].startswith("CN=SEV-Genoa,O=Advanced Micro Devices")
    path = next(k for k in sim.files if "?" in k)
    r = client.get(path)  # the simulator's VCEK: the only one cached for its chip
    assert r.status_code == 200 and r.content == sim.files[path]


@pytest.mark.parametrize(
    ("url", "field", "message"),
    [
        ("/vcek/v1/Rome/cert_chain", "product", "Input should be 'Milan', 'Genoa' or 'Turin'"),
        ("/vlek/v1/milan/crl", "product", "Input should be 'Milan', 'Genoa' or 'Turin'"),
        ("/vcek/v1/Milan/" + "ab" * 8, "hwid", "a Milan hwID is 64 bytes (128 hex digits), got 8"),
        ("/vcek/v1/Turin/" + "ab" * 64, "hwid", "a Turin hwID is 8 bytes (16 hex digits), got 64"),
        ("/vcek/v1/Genoa/" + "zz" * 64, "hwid", "expected hex digits"),
        ("/vcek/v1/Genoa/" + "a" * 127, "hwid", "expected hex digits"),
        ("/vcek/v1/Turin/" + "00" * 8, "hwid", "all zero (a masked CHIP_ID) names no chip"),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?blSPL=256", "blSPL", "less than or equal to 255"),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?teeSPL=-1", "teeSPL", "greater than or equal to 0"),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?snpSPL=eight", "snpSPL", "valid integer"),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?fmcSPL=1", "fmcSPL", "a Milan TCB has no FMC SPL (Turin only)"),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?blSPL=3&blSPL=4", "blSPL", "blSPL is given more than once"),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?microcodeSPL=1", "microcodeSPL", "unknown query parameter"),
        ("/vcek/v1/Milan/cert_chain?blSPL=1", "blSPL", "unknown query parameter"),
    ],
)
def test_malformed_requests_are_400(url: str, field: str, message: str, client: TestClient) -> None:
    r = client.get(url)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
    doc = r.json()
    assert doc["field"] == field and message in doc["detail"], doc


def test_404_names_what_is_missing_and_no_other_chip(client: TestClient, store: KdsStore) -> None:
    c = real_case("snp-trustee-milan")
    other = real_case("snp-gsg-milan")
    r = client.get(f"/vcek/v1/Milan/{c.chip_id.hex()}", params={"blSPL": 3, "snpSPL": 9, "ucodeSPL": 115})
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["detail"].startswith(
        f"no VCEK cached for Milan chip {c.chip_id[:8].hex()}… at TCB bl 3, tee 0, snp 9"
    )
    assert "cached for this chip: Milan TCB bl 3, tee 0, snp 8, ucode 115" in doc["detail"]
    assert doc["asked"] == {
        "product": "Milan",
        "signing_key": "vcek",
        "what": "vcek",
        "tcb": "0300000000000973",
    }
    r = client.get(f"/vcek/v1/Genoa/{bytes(range(64)).hex()}")
    detail = r.json()["detail"]
    assert r.status_code == 404 and "nothing cached for this chip (4 VCEK(s) of other chips)" in detail
    # the fleet's chip ids are never listed
    assert (
        not any(real_case(i).chip_id[:8].hex() in detail for i in VCEK_CASES)
        and other.chip_id.hex() not in detail
    )
    r = client.get("/vcek/v1/Genoa/crl")
    assert r.status_code == 404
    assert re.match(
        r"no VCEK CRL Genoa cached; cached CRLs: none\. Add it with 'keybroker collateral fetch --snp --product Genoa'",
        r.json()["detail"],
    )


def test_empty_cache_404s(client: TestClient) -> None:
    for url in ("/vcek/v1/Milan/cert_chain", "/vlek/v1/Turin/crl", f"/vcek/v1/Turin/{'01' * 8}"):
        r = client.get(url)
        assert r.status_code == 404 and "cached" in r.json()["detail"], r.text
