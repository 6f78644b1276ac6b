"""The KDS cache in the database (``collateral.kds_store``) and the lookup the SEV-SNP verifier uses:
what it hands out verifies the real reports at their cases' time, and the simulator's end to end
with CRLs; expired pieces at an injected time; every miss names what is missing."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tests.helpers.snp_kds import (
    SIM_AT,
    SIM_ISSUED,
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

from keybroker.collateral import kds
from keybroker.collateral.kds import SnpItem
from keybroker.collateral.kds_store import KdsStore
from keybroker.errors import CollateralNotFound, InvalidInput, VerificationError
from keybroker.store.db import Database
from keybroker.tee.sim.snp import CRL_VALIDITY, SnpDevPki
from keybroker.tee.snp.abi import parse_report
from keybroker.tee.snp.verify import verify_report

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")


@pytest.fixture
def store(database_url: str) -> Iterator[KdsStore]:
    """The store on SQLite, and on PostgreSQL with ``-m postgres`` (times compare alike on both)."""
    db = Database(database_url)
    db.migrate()
    s = KdsStore(db)
    yield s
    db.dispose()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimKds:
    return sim_kds(tmp_path_factory.mktemp("kds-store-sim") / "genoa")


def _sim_items(pki: SnpDevPki, files: dict[str, bytes]) -> list[SnpItem]:
    roots = [pki.root_cert]
    chains = [
        i
        for side in ("vcek", "vlek")
        for i in kds.chain_items(files[f"/{side}/v1/Genoa/cert_chain"], dev_roots=roots)
    ]
    crls = [
        kds.crl_item(files[f"/{s}/v1/Genoa/crl"], signing_key=s, dev_roots=roots) for s in ("vcek", "vlek")
    ]  # type: ignore[arg-type]
    vcek = kds.vcek_item(next(v for k, v in files.items() if "?" in k), chains=chains, dev_roots=roots)
    return [*chains, *crls, vcek]


def test_real_reports_verify_with_what_the_lookup_hands_out(store: KdsStore) -> None:
    added = store.import_items(real_items(), source="test")
    assert len(added.added) == 10 and not added.already_stored
    assert len(store.import_items(real_items(), source="again").already_stored) == 10  # a no-op
    for case_id in VCEK_CASES:
        c = real_case(case_id)
        for product in (None, "Milan"):  # version 2 reports: found by chip and TCB alone
            got = store.collateral_for(
                product=product,  # type: ignore[arg-type]
                chip_id=c.chip_id,
                reported_tcb=c.reported_tcb,
                signing_key="vcek",
                at=c.at,
                require_crl=False,
            )
            assert (got.product, got.root_kind, got.crls) == ("Milan", "amd", ())
            verified = verify_report(  # waived as the lookup was: no AMD CRL in the corpus
                c.report,
                vcek_or_vlek=got.vcek or b"",
                chain=got.chain,
                crls=got.crls,
                at=c.at,
                require_crl=False,
            )
            assert verified.claims.to_dict()["chip_id"] == c.chip_id.hex()
        # AMD's CRLs are not in the corpus: by default a missing CRL is named, not skipped
        with pytest.raises(
            CollateralNotFound, match="is cached, but no VCEK CRL Milan of the same ARK"
        ) as exc:
            store.collateral_for(
                product=None, chip_id=c.chip_id, reported_tcb=c.reported_tcb, signing_key="vcek", at=c.at
            )
        assert "keybroker collateral fetch --snp --product Milan" in exc.value.detail
    # VLEK: the chain of the report's product; the VLEK itself comes with the evidence
    v = real_case(VLEK_CASE)
    got = store.collateral_for(
        product="Milan",
        chip_id=v.chip_id,
        reported_tcb=v.reported_tcb,
        signing_key="vlek",
        at=v.at,
        require_crl=False,
    )
    asvk = x509.load_der_x509_certificate(got.chain[0])
    assert (
        got.vcek is None
        and asvk.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "SEV-VLEK-Milan"
    )
    verified = verify_report(v.report, vcek_or_vlek=v.signer, chain=got.chain, at=v.at, require_crl=False)
    assert verified.signing_key == "vlek"
    # ... and at the expired case's time the same pieces fail on time, not on a vague "not found"
    expired_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    again = store.collateral_for(
        product="Milan",
        chip_id=v.chip_id,
        reported_tcb=v.reported_tcb,
        signing_key="vlek",
        at=expired_at,
        require_crl=False,
    )
    with pytest.raises(VerificationError, match="VLEK expired at 2025-12-10") as exc_v:
        verify_report(v.report, vcek_or_vlek=v.signer, chain=again.chain, at=expired_at, require_crl=False)
    assert exc_v.value.check == "validity_window"
    with pytest.raises(InvalidInput, match="a VLEK lookup needs the product"):
        store.collateral_for(product=None, chip_id=v.chip_id, reported_tcb=v.reported_tcb, signing_key="vlek")


def test_turin_vcek_is_found_by_the_first_8_bytes_of_chip_id(store: KdsStore) -> None:
    store.import_items(real_items(), source="test")
    (turin,) = kds.snp_file_items(read_bytes(TURIN_VCEK))
    assert turin.hwid is not None and turin.tcb is not None
    chip = turin.hwid + bytes(56)
    for product in (None, "Turin"):
        got = store.collateral_for(
            product=product,
            chip_id=chip,
            reported_tcb=turin.tcb,
            signing_key="vcek",
            require_crl=False,  # type: ignore[arg-type]
        )
        assert got.product == "Turin" and got.vcek == turin.content
    with pytest.raises(CollateralNotFound, match="no VCEK cached for Milan chip"):
        store.collateral_for(product="Milan", chip_id=chip, reported_tcb=turin.tcb, signing_key="vcek")


def test_misses_name_what_is_missing_and_no_other_chip(store: KdsStore) -> None:
    c = real_case("snp-trustee-milan")
    other = real_case("snp-gsg-milan")
    # A VCEK alone (verified through AMD's shipped ASK), its chain not stored
    (vcek,) = kds.snp_file_items(c.signer)
    store.import_items([vcek, *kds.snp_file_items(other.signer)], source="test")
    with pytest.raises(
        CollateralNotFound, match="is cached, but not the ASK\\+ARK Milan that issued it"
    ) as exc:
        store.collateral_for(product=None, chip_id=c.chip_id, reported_tcb=c.reported_tcb, signing_key="vcek")
    assert exc.value.extra["asked"] == {"product": "Milan", "signing_key": "vcek", "what": "cert_chain"}
    # Another TCB of a cached chip: the TCBs cached for that chip are named, nothing of other chips
    other_tcb = bytes([3, 0, 0, 0, 0, 0, 9, 115])
    with pytest.raises(CollateralNotFound) as exc:
        store.collateral_for(product="Milan", chip_id=c.chip_id, reported_tcb=other_tcb, signing_key="vcek")
    detail = exc.value.detail
    assert detail.startswith(
        f"no VCEK cached for Milan chip {c.chip_id[:8].hex()}… at TCB bl 3, tee 0, snp 9, ucode 115"
    )
    assert "cached for this chip: Milan TCB bl 3, tee 0, snp 8, ucode 115" in detail
    assert other.chip_id[:8].hex() not in detail and "--report REPORT" in detail
    unknown_chip = bytes(range(64))
    with pytest.raises(
        CollateralNotFound, match=r"nothing cached for this chip \(2 VCEK\(s\) of other chips\)"
    ) as exc:
        store.collateral_for(
            product=None, chip_id=unknown_chip, reported_tcb=c.reported_tcb, signing_key="vcek"
        )
    assert "--product PRODUCT" in exc.value.detail  # a version 2 report: the fetch needs the product
    with pytest.raises(CollateralNotFound, match="CHIP_ID is zero"):
        store.collateral_for(
            product="Milan", chip_id=bytes(64), reported_tcb=c.reported_tcb, signing_key="vcek"
        )
    with pytest.raises(CollateralNotFound, match="no ASVK\\+ARK Genoa cached"):
        store.collateral_for(product="Genoa", chip_id=bytes(64), reported_tcb=bytes(8), signing_key="vlek")
    for kwargs, field in (
        ({"chip_id": bytes(63)}, "chip_id"),
        ({"reported_tcb": bytes(7)}, "reported_tcb"),
        ({"product": "Rome"}, "product"),
    ):
        args = {
            "product": "Milan",
            "chip_id": c.chip_id,
            "reported_tcb": c.reported_tcb,
            "signing_key": "vcek",
        }
        with pytest.raises(InvalidInput) as bad:
            store.collateral_for(**{**args, **kwargs})  # type: ignore[arg-type]
        assert bad.value.field == field


def test_the_simulator_end_to_end_with_crls_at_injected_times(
    store: KdsStore, sim: SimKds, tmp_path: Path
) -> None:
    """The lookup picks the pieces valid at the verification time; expired ones fail on time."""
    store.import_items(_sim_items(sim.pki, sim.files), source="sim")
    unverified = parse_report(sim.report)
    roots = [sim.pki.root_cert]

    def lookup(at: dt.datetime) -> kds.SnpCollateral:
        return store.collateral_for(
            product="Genoa",
            chip_id=unverified.chip_id,
            reported_tcb=unverified.reported_tcb,
            signing_key="vcek",
            at=at,
        )

    got = lookup(SIM_AT)
    assert got.root_kind == "dev" and len(got.crls) == 2 and got.crls[0] == sim.pki.crl("vcek")
    ok = verify_report(
        sim.report,
        vcek_or_vlek=got.vcek or b"",
        chain=got.chain,
        crls=got.crls,
        at=SIM_AT,
        dev_roots=roots,
        require_crl=True,
    )
    assert ok.sim and "crl" in ok.checks
    # A second pair of CRLs issued 40 days later (the first has expired by then): each time gets its own
    pki = SnpDevPki.load(shutil.copytree(sim.pki.directory, tmp_path / "later"))
    later = SIM_ISSUED + dt.timedelta(days=40)
    pki.reissue_crls(now=later)
    store.import_items(
        [kds.crl_item(pki.crl(s), signing_key=s, dev_roots=roots) for s in ("vcek", "vlek")],  # type: ignore[arg-type]
        source="later",
    )
    assert lookup(SIM_AT).crls[0] == sim.pki.crl("vcek")
    at_later = later + dt.timedelta(hours=1)
    assert lookup(at_later).crls[0] == pki.crl("vcek")
    verify_report(
        sim.report,
        vcek_or_vlek=got.vcek or b"",
        chain=got.chain,
        crls=lookup(at_later).crls,
        at=at_later,
        dev_roots=roots,
        require_crl=True,
    )
    # Past every CRL's nextUpdate: the newest is handed out, and the verifier says it expired
    gone = later + CRL_VALIDITY + dt.timedelta(days=1)
    stale = lookup(gone)
    assert stale.crls[0] == pki.crl("vcek")
    with pytest.raises(
        VerificationError, match=r"is valid 2026-04-10T12:00:00Z\.\.2026-05-10T12:00:00Z, not at"
    ) as exc:
        verify_report(
            sim.report,
            vcek_or_vlek=got.vcek or b"",
            chain=got.chain,
            crls=stale.crls,
            at=gone,
            dev_roots=roots,
            require_crl=True,
        )
    assert exc.value.check == "crl"
    # A revocation of the ASK, once cached, is what the lookup hands out: the report is refused
    pki.revoke_intermediate("vcek", now=later + dt.timedelta(days=1))
    store.import_items([kds.crl_item(pki.crl("vcek"), signing_key="vcek", dev_roots=roots)], source="revoked")
    at_revoked = later + dt.timedelta(days=2)
    with pytest.raises(VerificationError, match="is revoked by ARK-Genoa's CRL") as exc:
        verify_report(
            sim.report,
            vcek_or_vlek=got.vcek or b"",
            chain=got.chain,
            crls=lookup(at_revoked).crls,
            at=at_revoked,
            dev_roots=roots,
            require_crl=True,
        )


def test_amd_before_dev_and_export(store: KdsStore, sim: SimKds) -> None:
    """The KDS endpoints serve AMD's chain of a product before a simulator's, however new."""
    amd_genoa = [i for i in real_chains() if i.product == "Genoa"]
    store.import_items(amd_genoa, source="amd")
    store.import_items(_sim_items(sim.pki, sim.files), source="sim")
    served = store.newest("snp_cert_chain", product="Genoa", signing_key="vcek")
    assert served is not None and served.root_kind == "amd" and served.digest == amd_genoa[0].digest
    crl = store.newest("snp_crl", product="Genoa", signing_key="vlek")
    assert crl is not None and crl.root_kind == "dev"  # only the simulator's is cached
    assert store.newest("snp_crl", product="Milan", signing_key="vcek") is None
    exported = store.export_items(products=["Genoa"])
    assert {e[0].digest for e in exported} == {
        i.digest for i in [*amd_genoa, *_sim_items(sim.pki, sim.files)]
    }
    assert {e[1] for e in exported} == {"amd", "sim"}
    with pytest.raises(CollateralNotFound, match="no SEV-SNP collateral cached for Turin"):
        store.export_items(products=["Turin"])
    listed = store.list_items(product="Genoa")
    assert len(listed) == 7 and {r.to_dict()["tee"] for r in listed} == {"snp"}
    assert store.has_vcek("Genoa", *_vcek_key(_sim_items(sim.pki, sim.files)[-1]))


def _vcek_key(item: SnpItem) -> tuple[bytes, bytes]:
    assert item.hwid is not None and item.tcb is not None
    return item.hwid, item.tcb


def test_crls_for_a_chain_by_its_arks_key_and_side(store: KdsStore, sim: SimKds) -> None:
    """What the verifier applies to every chain: the CRLs of that ARK (by key: AMD's ARK-Genoa,
    which has the same name, gets none of the dev ARK's), the asked side first, newest valid then."""
    from keybroker.tee.snp.certs import ARK_SPKI_SHA256, spki_sha256

    dev_ark = spki_sha256(sim.pki.root_cert)
    empty = store.crls_for(product="Genoa", signing_key="vcek", ark_spki_sha256=dev_ark, at=SIM_AT)
    assert empty.side == () and empty.other == () and "cached CRLs: none" in empty.held
    assert "collateral fetch --snp --product Genoa" in empty.fix and "Refresh now" in empty.fix
    store.import_items(_sim_items(sim.pki, sim.files), source="sim")
    vcek = store.crls_for(product="Genoa", signing_key="vcek", ark_spki_sha256=dev_ark, at=SIM_AT)
    assert vcek.side == (sim.pki.crl("vcek"),) and vcek.other == (sim.pki.crl("vlek"),) and vcek.held == ""
    vlek = store.crls_for(product="Genoa", signing_key="vlek", ark_spki_sha256=dev_ark, at=SIM_AT)
    assert vlek.side == (sim.pki.crl("vlek"),) and vlek.other == (sim.pki.crl("vcek"),)
    amd = store.crls_for(
        product="Genoa", signing_key="vcek", ark_spki_sha256=ARK_SPKI_SHA256["Genoa"], at=SIM_AT
    )
    assert amd.side == () and amd.other == () and "VCEK CRL Genoa (dev root)" in amd.held
    with pytest.raises(InvalidInput):
        store.crls_for(product="Rome", signing_key="vcek", ark_spki_sha256=dev_ark)  # type: ignore[arg-type]
