"""The collateral store: import (verified, deduplicated), lookup by quote, history, export round trips."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.unit.collateral.conftest import CORPUS_FILES, SIM_ISSUED, TAMPERED_FILES, new_store
from tests.vectors.corpus import load_cases, path, read_bytes, read_text, verify_at

from keybroker.collateral.importers import bundle_document, items_from_document, read_file
from keybroker.collateral.items import TrustedRoots, items_from_collateral
from keybroker.collateral.store import CollateralStore, DbCollateralSource, lookup_for_cli
from keybroker.config import Settings
from keybroker.errors import CollateralError, CollateralNotFound, EvidenceParseError, VerificationError
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.sources import ChainedCollateral, StaticCollateral
from keybroker.tee.dcap.verify import quote_fmspc_and_ca, verify_quote
from keybroker.tee.sim import DevPki, sgx_quote, tdx_quote

COS113_JUNE = "intel-dcap/assembled/tdx_00806F050000_2025-06.json"
COS113_OCT = "intel-dcap/assembled/tdx_00806F050000_2025-10.json"
COS113_QUOTE = "intel-dcap/google-go-tdx-guest/ccel/cos-113-tdx-quote.dat"
#: Lookup cases: every corpus case whose collateral is genuine and the quote's own platform's.
LOOKUP_CASES = [
    c
    for c in load_cases("dcap")
    if not c["collateral"].startswith("tampered/") and not c["id"].startswith("dcap-mismatch")
]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("rel", CORPUS_FILES)
def test_every_corpus_file_splits_into_four_verified_items(rel: str, intel_roots: TrustedRoots) -> None:
    items = read_file(path(rel), intel_roots)
    coll = QuoteCollateral.from_json(read_text(rel))
    assert [i.kind for i in items] == ["tcb_info", "qe_identity", "pck_crl", "root_ca_crl"]
    assert items[0].tee == coll.tee and items[0].fmspc == coll.fmspc and items[2].pck_ca == coll.pck_ca
    assert {i.root_kind for i in items} == {"intel"}
    assert items[0].signed_text == coll.tcb_info and items[1].signature == coll.qe_identity_signature
    assert (
        items[0].issue_date == coll.tcb_info_issue_date and items[0].next_update == coll.tcb_info_next_update
    )


def test_import_is_idempotent_and_dedupes_shared_pieces(
    store: CollateralStore, intel_roots: TrustedRoots
) -> None:
    batches = [(rel, read_file(path(rel), intel_roots)) for rel in CORPUS_FILES]
    first = store.import_sources(batches)
    # 11 files x 4 pieces; the root CA CRLs and some CRLs / identities are shared between files
    assert 4 * len(CORPUS_FILES) > len(first.added) >= len(CORPUS_FILES) + 3
    assert not first.already_stored
    again = store.import_sources(batches)
    assert not again.added and len(again.already_stored) == len(first.added)
    assert len(store.list_items()) == len(first.added)


def test_concurrent_imports_store_each_piece_once(tmp_path: object, intel_roots: TrustedRoots) -> None:
    store = new_store(tmp_path / "s")  # type: ignore[operator]
    items = [i for rel in CORPUS_FILES[:4] for i in read_file(path(rel), intel_roots)]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            CollateralStore(store.db).import_items(items, source="thread")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_items()) == len({i.digest for i in items})


def test_sim_collateral_needs_its_dev_root(
    dev_pki: DevPki, intel_roots: TrustedRoots, dev_roots: TrustedRoots
) -> None:
    with pytest.raises(CollateralError, match=r"keybroker DEV SGX Root CA.*not the Intel SGX Root CA"):
        read_file(dev_pki.collateral_path("sgx"), intel_roots)
    items = read_file(dev_pki.collateral_path("tdx"), dev_roots)
    assert {i.root_kind for i in items} == {"dev"} and items[0].fmspc == "00DE7D000000"


@pytest.mark.parametrize("name", TAMPERED_FILES)
def test_tampered_collateral_is_refused(name: str, intel_roots: TrustedRoots) -> None:
    with pytest.raises(
        CollateralError, match=r"signature does not verify under 'Intel SGX TCB Signing'"
    ) as exc:
        read_file(path(f"tampered/{name}"), intel_roots)
    assert name in exc.value.detail


def test_signers_must_have_the_right_role(dev_pki: DevPki, dev_roots: TrustedRoots) -> None:
    """A TCB Info signed by a PCK CA, or a PCK CRL 'issued' by the TCB Signing cert, chain to the root
    but are not what those roles may sign."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from keybroker.collateral.items import pck_crl_item, signed_item
    from keybroker.tee.sim.pki import signature_raw

    coll = QuoteCollateral.from_json(dev_pki.collateral_json("sgx"))
    ca_chain = dev_pki.processor_ca.cert.public_bytes(Encoding.PEM) + dev_pki.root_cert.public_bytes(
        Encoding.PEM
    )
    forged = signature_raw(dev_pki.processor_ca.key, coll.tcb_info.encode())
    with pytest.raises(CollateralError, match="is not a TCB Signing certificate"):
        signed_item("tcb_info", coll.tcb_info, forged, ca_chain.decode(), dev_roots)
    with pytest.raises(CollateralError, match="is not a PCK CA"):
        pck_crl_item(coll.pck_crl, coll.tcb_info_issuer_chain, dev_roots)
    with pytest.raises(CollateralError, match="signature does not verify"):
        signed_item(
            "identity", coll.qe_identity, coll.tcb_info_signature, coll.qe_identity_issuer_chain, dev_roots
        )


@pytest.mark.parametrize("case", LOOKUP_CASES, ids=[c["id"] for c in LOOKUP_CASES])
def test_lookup_by_quote_fmspc_and_ca_gives_the_case_verdict(
    case: dict[str, object], corpus_store: CollateralStore
) -> None:
    """Every corpus quote, with collateral chosen from the store (valid at verify_at) instead of a file."""
    raw = read_bytes(str(case["quote"]))
    at = verify_at(case)
    expect = case["expect"]
    assert isinstance(expect, dict)
    try:
        fmspc, ca, tee = quote_fmspc_and_ca(raw)
        coll = corpus_store.collateral_for(tee=tee, fmspc=fmspc, pck_ca=ca, at=at)
        assert coll.fmspc == fmspc and coll.pck_ca == ca and coll.tee == tee
        result = verify_quote(raw, coll, at=at)
    except (EvidenceParseError, VerificationError):
        assert expect["verdict"] == "reject"
        return
    assert expect["verdict"] in ("accept", "policy-dependent")
    if "status" in expect:
        assert result.status == expect["status"]
        assert list(result.advisory_ids) == expect.get("advisories", [])


def test_lookup_of_sim_quotes(corpus_store: CollateralStore, dev_pki: DevPki) -> None:
    at = SIM_ISSUED.replace(hour=13)
    for quote in (sgx_quote(dev_pki, report_data=bytes(64)), tdx_quote(dev_pki, report_data=bytes(64))):
        fmspc, ca, tee = quote_fmspc_and_ca(quote)
        coll = DbCollateralSource(corpus_store, at=at).collateral_for(tee=tee, fmspc=fmspc, pck_ca=ca)
        assert verify_quote(quote, coll, at=at, dev_roots=[dev_pki.root_cert]).sim


@pytest.mark.parametrize("order", [(COS113_JUNE, COS113_OCT), (COS113_OCT, COS113_JUNE)])
def test_history_newest_valid_wins(
    order: tuple[str, str], store: CollateralStore, intel_roots: TrustedRoots
) -> None:
    for rel in order:
        store.import_items(read_file(path(rel), intel_roots), source=rel)
    june, october = (QuoteCollateral.from_json(read_text(r)) for r in (COS113_JUNE, COS113_OCT))
    ask = {"tee": "tdx", "fmspc": "00806f050000", "pck_ca": "platform"}
    # both expired now: the newest
    assert store.collateral_for(**ask).tcb_info == october.tcb_info
    # at a past time: the version valid then
    assert store.collateral_for(**ask, at=_at("2025-06-26T21:50:26")).tcb_info == june.tcb_info
    assert store.collateral_for(**ask, at=_at("2025-10-31T14:17:11")) == october
    # PCCS serves the newest stored, whatever the import order
    newest = store.newest("tcb_info", tee="tdx", fmspc="00806F050000")
    assert newest is not None and newest.signed_text == october.tcb_info
    history = store.list_items(kind="tcb_info")
    assert [h.issue_date for h in history] == [october.tcb_info_issue_date, june.tcb_info_issue_date]


def test_collateral_assembled_from_one_file_equals_the_file(
    store: CollateralStore, intel_roots: TrustedRoots
) -> None:
    rel = "intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json"
    store.import_items(read_file(path(rel), intel_roots), source=rel)
    coll = QuoteCollateral.from_json(read_text(rel))
    got = store.collateral_for(tee="sgx", fmspc=coll.fmspc, pck_ca=coll.pck_ca)
    assert got.digest == coll.digest
    # a second lookup of the same pieces is served from the assembled cache: the same object
    assert store.collateral_for(tee="sgx", fmspc=coll.fmspc, pck_ca=coll.pck_ca) is got


def test_pck_certificate_chain_is_not_stored(store: CollateralStore, intel_roots: TrustedRoots) -> None:
    rel = "intel-dcap/phala-dcap-qvl/tdx_quote_td15ex_collateral.json"
    coll = QuoteCollateral.from_json(read_text(rel))
    assert coll.pck_certificate_chain is not None
    store.import_items(read_file(path(rel), intel_roots), source=rel)
    got = store.collateral_for(tee="tdx", fmspc=coll.fmspc, pck_ca="platform")
    assert got.pck_certificate_chain is None and got.tcb_info == coll.tcb_info


def test_not_found_names_what_was_asked_and_what_is_cached(
    corpus_store: CollateralStore, store: CollateralStore
) -> None:
    with pytest.raises(CollateralNotFound) as exc:
        store.collateral_for(tee="sgx", fmspc="00906ed50000", pck_ca="processor")
    assert "no SGX TCB Info for FMSPC 00906ED50000 cached" in exc.value.detail
    assert "cached TCB Info: none" in exc.value.detail
    with pytest.raises(CollateralNotFound) as exc:
        corpus_store.collateral_for(tee="sgx", fmspc="00806F050000", pck_ca="platform")
    detail = exc.value.detail
    assert "(it is cached as TDX TCB Info" in detail and "TDX 00806F050000 until 2025-11-18" in detail
    assert (
        "SGX 00DE5C000000 (dev root)" in detail
        and "keybroker collateral fetch --fmspc 00806F050000" in detail
    )
    assert exc.value.extra["asked"] == {"tee": "sgx", "fmspc": "00806F050000", "pck_ca": "platform"}
    chained = ChainedCollateral(StaticCollateral(), DbCollateralSource(store))
    with pytest.raises(CollateralNotFound, match=r"cached: nothing; no SGX TCB Info for FMSPC 00906ED50000"):
        chained.collateral_for(tee="sgx", fmspc="00906ED50000", pck_ca="processor")


def test_missing_pieces_are_named(store: CollateralStore, intel_roots: TrustedRoots) -> None:
    coll = QuoteCollateral.from_json(read_text(COS113_OCT))
    pcs = coll.to_pcs()
    doc = {"tcb_info_body": pcs["tcb_info_body"], "tcb_info_issuer_chain": pcs["tcb_info_issuer_chain"]}
    store.import_items(items_from_document(doc, intel_roots), source="partial")
    with pytest.raises(CollateralNotFound) as exc:
        store.collateral_for(tee="tdx", fmspc="00806F050000", pck_ca="platform")
    assert (
        "is cached, but no TD_QE identity, no PCK CRL of the platform CA, no root CA CRL" in exc.value.detail
    )


def test_dev_and_intel_roots_are_not_mixed(
    store: CollateralStore, dev_pki: DevPki, dev_roots: TrustedRoots
) -> None:
    """The sim's TDX TCB Info is served with the sim's TD_QE identity and CRLs, never Intel's."""
    store.import_items(read_file(path(COS113_OCT), dev_roots), source="intel")
    store.import_items(read_file(dev_pki.collateral_path("tdx"), dev_roots), source="sim")
    sim = store.collateral_for(tee="tdx", fmspc="00DE7D000000", pck_ca="platform")
    assert sim == QuoteCollateral.from_json(dev_pki.collateral_json("tdx"))
    intel = store.collateral_for(tee="tdx", fmspc="00806F050000", pck_ca="platform")
    assert intel == QuoteCollateral.from_json(read_text(COS113_OCT))
    # PCCS endpoints prefer Intel's pieces even though the sim's are newer
    qe = store.newest("qe_identity", tee="tdx")
    assert qe is not None and qe.root_kind == "intel"


def test_export_import_round_trip_keeps_digests(
    corpus_store: CollateralStore, intel_roots: TrustedRoots, tmp_path: object
) -> None:
    entries = corpus_store.export_items(fmspc="00806f050000")
    kinds = sorted(e[0].kind for e in entries)
    assert kinds == ["pck_crl", "pck_crl", "qe_identity", "root_ca_crl", "tcb_info"]  # newest of each
    doc = json.loads(json.dumps(bundle_document(entries, created_at=datetime.now(UTC))))
    back = items_from_document(doc, intel_roots)
    assert [i.digest for i in back] == [e[0].digest for e in entries]
    other = new_store(tmp_path / "other")  # type: ignore[operator]
    other.import_items(back, source="bundle")
    ask = {"tee": "tdx", "fmspc": "00806F050000", "pck_ca": "platform"}
    assert other.collateral_for(**ask).digest == corpus_store.collateral_for(**ask).digest
    with_history = corpus_store.export_items(fmspc="00806F050000", tee="tdx", history=True)
    assert sum(e[0].kind == "tcb_info" for e in with_history) == 2
    with pytest.raises(CollateralNotFound, match="no SGX TCB Info cached for FMSPC 00806F050000"):
        corpus_store.export_items(fmspc="00806F050000", tee="sgx")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fmspc": "00606A000000"}, "fmspc: says '00606A000000'"),
        ({"digest": "00" * 32}, "digest: says"),
        ({"root": "dev"}, "root: says 'dev' but the content is 'intel'"),
        ({"next_update": "2030-01-01T00:00:00+00:00"}, "next_update: says"),
        ({"extra": 1}, "unknown members"),
        ({"kind": "pck_crl"}, "expected a string"),
        ({"kind": "bogus"}, "is not tcb_info"),
    ],
)
def test_bundle_items_are_cross_checked(
    change: dict[str, object], message: str, corpus_store: CollateralStore, intel_roots: TrustedRoots
) -> None:
    entries = corpus_store.export_items(fmspc="00806F050000")
    doc = json.loads(json.dumps(bundle_document(entries, created_at=datetime.now(UTC))))
    tcb = next(i for i in doc["items"] if i["kind"] == "tcb_info")
    tcb.update(change)
    with pytest.raises(CollateralError, match=message):
        items_from_document(doc, intel_roots)


def test_bundle_with_a_tampered_body_is_refused(
    corpus_store: CollateralStore, intel_roots: TrustedRoots
) -> None:
    doc = bundle_document(corpus_store.export_items(fmspc="00806F050000"), created_at=datetime.now(UTC))
    tcb = next(i for i in doc["items"] if i["kind"] == "tcb_info")
    tcb["body"] = tcb["body"].replace('"tcbEvaluationDataNumber":', '"tcbEvaluationDataNumber": ', 1)
    with pytest.raises(CollateralError, match="TCB Info signature does not verify"):
        items_from_document(doc, intel_roots)
    doc["format"] = "keybroker-collateral-bundle/2"
    with pytest.raises(CollateralError, match="is not 'keybroker-collateral-bundle/1'"):
        items_from_document(doc, intel_roots)


def test_pcs_form_gives_the_same_items_as_the_corpus_form(intel_roots: TrustedRoots) -> None:
    rel = "intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json"
    coll = QuoteCollateral.from_json(read_text(rel))
    pcs = dict(coll.to_pcs())
    pcs["pck_crl"] = coll.pck_crl.hex()
    pcs["root_ca_crl"] = coll.root_ca_crl.hex()
    from_pcs = items_from_document(pcs, intel_roots)
    assert [i.digest for i in from_pcs] == [i.digest for i in items_from_collateral(coll, intel_roots)]
    with pytest.raises(CollateralError, match="come together"):
        items_from_document({"tcb_info_body": pcs["tcb_info_body"]}, intel_roots)


def test_sim_pcs_files_import(dev_pki: DevPki, dev_roots: TrustedRoots) -> None:
    d = dev_pki.directory
    doc = {
        "tcb_info_body": (d / "tcbinfo-sgx.json").read_text(),
        "tcb_info_issuer_chain": (d / "tcb-signing-chain.pem").read_text(),
        "qve_identity_body": (d / "qe-identity.json").read_text(),  # a QE identity is not a QVE identity
        "qve_identity_issuer_chain": (d / "tcb-signing-chain.pem").read_text(),
    }
    with pytest.raises(CollateralError, match="qve_identity_body holds a QE identity"):
        items_from_document(doc, dev_roots)
    doc = {
        "tcb_info_body": doc["tcb_info_body"],
        "tcb_info_issuer_chain": doc["tcb_info_issuer_chain"],
        "pck_crl": (d / "pck-processor-crl.der").read_bytes().hex(),
        "pck_crl_issuer_chain": (d / "pck-processor-crl-chain.pem").read_text(),
        "root_ca_crl": (d / "root-crl.der").read_bytes().hex(),
    }
    assert [i.label for i in items_from_document(doc, dev_roots)] == [
        "TCB Info SGX 00DE5C000000",
        "PCK CRL processor",
        "root CA CRL",
    ]


def test_lookup_for_cli(tmp_path: Path, intel_roots: TrustedRoots) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    source = lookup_for_cli(settings, at=_at("2025-06-26T21:50:26"))
    with pytest.raises(
        CollateralNotFound, match=r"no keybroker database in .*data to look up TDX FMSPC 00806F050000"
    ):
        source.collateral_for(tee="tdx", fmspc="00806f050000", pck_ca="platform")
    store = new_store(settings.data_dir)
    store.import_items(read_file(path(COS113_JUNE), intel_roots), source="june")
    store.import_items(read_file(path(COS113_OCT), intel_roots), source="october")
    got = lookup_for_cli(settings, at=_at("2025-06-26T21:50:26")).collateral_for(
        tee="tdx", fmspc="00806f050000", pck_ca="platform"
    )
    assert got == QuoteCollateral.from_json(read_text(COS113_JUNE))
    with pytest.raises(CollateralNotFound, match="no TDX TCB Info for FMSPC 00906ED50000 cached"):
        lookup_for_cli(settings).collateral_for(tee="tdx", fmspc="00906ED50000", pck_ca="platform")
    broken = Settings(data_dir=tmp_path, database="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(CollateralError, match="the collateral store is unavailable"):
        lookup_for_cli(broken).collateral_for(tee="tdx", fmspc="00906ED50000", pck_ca="platform")
