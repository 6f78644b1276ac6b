"""The KDS cache's pure half (``collateral.kds``): files as AMD's KDS serves them become verified
items, or are refused; KDS paths and parameters; what a report asks for; offline bundle entries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.helpers.snp_kds import (
    CHAIN_FILES,
    TURIN_VCEK,
    VCEK_CASES,
    VLEK,
    VLEK_CASE,
    SimKds,
    real_case,
    real_chains,
    real_items,
    sim_kds,
)
from tests.vectors.corpus import read_bytes

from keybroker.collateral import kds
from keybroker.errors import CollateralError, InvalidInput, UntrustedCollateralRoot
from keybroker.tee.snp.abi import parse_report
from keybroker.tee.snp.certs import ARK_SPKI_SHA256, amd_roots

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimKds]:
    yield sim_kds(tmp_path_factory.mktemp("kds-sim") / "genoa")


def test_real_amd_files_become_items() -> None:
    chains = real_chains()
    assert [i.label for i in chains] == [
        f"{mid}+ARK {p}" for p in ("Milan", "Genoa", "Turin") for mid in ("ASK", "ASVK")
    ]
    for item in chains:
        assert item.root_kind == "amd" and item.ark_spki_sha256 == ARK_SPKI_SHA256[item.product]
        mid, ark = item.chain_ders()  # intermediate then the pinned ARK, as AMD's KDS serves it
        pinned = amd_roots()[item.product]
        assert ark == pinned.ark.public_bytes(Encoding.DER)
        assert mid == (pinned.ask if item.signing_key == "vcek" else pinned.asvk).public_bytes(Encoding.DER)
        assert item.content.count(b"-----BEGIN CERTIFICATE-----") == 2
    # each real VCEK is stored under the chip and TCB its own extensions name: its report's
    for case_id in VCEK_CASES:
        c = real_case(case_id)
        (item,) = kds.snp_file_items(c.signer, chains=chains)
        assert (item.kind, item.product, item.root_kind) == ("snp_vcek", "Milan", "amd")
        assert item.hwid == c.chip_id and item.tcb == c.reported_tcb
        # a VCEK without the chain given verifies through AMD's shipped ASK: the same item
        assert kds.snp_file_items(c.signer) == [item]
    (turin,) = kds.snp_file_items(read_bytes(TURIN_VCEK))
    assert turin.product == "Turin" and turin.hwid is not None and len(turin.hwid) == 8
    assert turin.label.endswith("TCB fmc 0, bl 0, tee 0, snp 0, ucode 9")
    # re-reading gives the same digests: one piece, one identity
    assert [i.digest for i in real_items()] == [i.digest for i in real_items()]


def test_refused_files(sim: SimKds) -> None:
    with pytest.raises(CollateralError, match="a VLEK is not cached"):
        kds.snp_file_items(read_bytes(VLEK))
    for bad in ("test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"):
        with pytest.raises(CollateralError, match="not signed by") as exc:
            kds.snp_file_items(read_bytes(f"amd-sev-snp/coco-trustee/{bad}"), chains=real_chains())
        assert not isinstance(exc.value, UntrustedCollateralRoot)
    # the simulator's chain: refused until its ARK is configured, naming it for --trust-root
    chain = (sim.pki.directory / "cert_chain.pem").read_bytes()
    with pytest.raises(UntrustedCollateralRoot, match="comes with ARK-Genoa") as untrusted:
        kds.snp_file_items(chain)
    assert (
        untrusted.value.root_sha256 == sim.pki.root_fingerprint and untrusted.value.root_name == "ARK-Genoa"
    )
    with pytest.raises(UntrustedCollateralRoot, match="is not a trusted ARK") as crl_exc:
        kds.snp_file_items(sim.pki.crl(), crl_for="vcek")
    assert crl_exc.value.root_name == "ARK-Genoa"
    with pytest.raises(InvalidInput, match="give --crl-for vcek or --crl-for vlek"):
        kds.snp_file_items(sim.pki.crl(), dev_roots=[sim.pki.root_cert])
    both = read_bytes(CHAIN_FILES["Milan"]) + kds._pem(real_case("snp-trustee-milan").signer)
    with pytest.raises(CollateralError, match="either one VCEK or a cert_chain"):
        kds.snp_file_items(both)
    with pytest.raises(InvalidInput, match="neither a DER certificate nor a DER CRL"):
        kds.snp_file_items(b"\x30\x03\x02\x01\x00")
    with pytest.raises(CollateralError, match="no PEM certificate found|unexpected bytes"):
        kds.snp_file_items(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    # trusted, they verify: each side's chain and CRL, and the VCEK through its chain
    roots = [sim.pki.root_cert]
    (ask,) = kds.snp_file_items(chain, dev_roots=roots)
    (crl,) = kds.snp_file_items(sim.pki.crl("vlek"), dev_roots=roots, crl_for="vlek")
    assert (ask.label, ask.root_kind, crl.label) == ("ASK+ARK Genoa", "dev", "VLEK CRL Genoa")
    vcek_der = next(v for k, v in sim.files.items() if "?" in k)
    with pytest.raises(CollateralError, match="among AMD's shipped certificates"):
        kds.snp_file_items(vcek_der, dev_roots=roots)  # no chain of its ASK at hand
    (vcek,) = kds.snp_file_items(vcek_der, chains=[ask], dev_roots=roots)
    assert (
        vcek.hwid == parse_report(sim.report).chip_id and vcek.intermediate_sha256 == ask.intermediate_sha256
    )


def test_kds_paths_and_parameters() -> None:
    (turin,) = kds.snp_file_items(read_bytes(TURIN_VCEK))
    assert turin.hwid is not None and turin.tcb is not None
    assert kds.vcek_path("Turin", turin.hwid) == f"/vcek/v1/Turin/{turin.hwid.hex()}"
    params = kds.vcek_params("Turin", turin.tcb)
    assert list(params) == ["fmcSPL", "blSPL", "teeSPL", "snpSPL", "ucodeSPL"] and params["ucodeSPL"] == "9"
    spls: dict[str, int | None] = {k: int(v) for k, v in params.items()}
    assert kds.tcb_from_spls("Turin", spls) == turin.tcb
    c = real_case("snp-trustee-milan")
    milan = kds.vcek_params("Milan", c.reported_tcb)
    assert milan == {"blSPL": "3", "teeSPL": "0", "snpSPL": "8", "ucodeSPL": "115"}
    assert kds.tcb_from_spls("Milan", {k: int(v) for k, v in milan.items()}) == c.reported_tcb
    # absent SPLs are zero, as at AMD's KDS
    assert kds.tcb_from_spls("Genoa", {"ucodeSPL": 84}) == bytes(7) + b"\x54"
    assert kds.parse_hwid("Milan", c.chip_id.hex().upper()) == c.chip_id
    refusals: list[tuple[Any, str]] = [
        (lambda: kds.tcb_from_spls("Milan", {"fmcSPL": 1}), "fmcSPL: a Milan TCB has no FMC SPL"),
        (lambda: kds.tcb_from_spls("Turin", {"blSPL": 256}), "blSPL: 256 is not 0-255"),
        (lambda: kds.parse_hwid("Turin", c.chip_id.hex()), "a Turin hwID is 8 bytes (16 hex digits), got 64"),
        (lambda: kds.parse_hwid("Milan", "c3" * 8), "a Milan hwID is 64 bytes (128 hex digits), got 8"),
        (lambda: kds.parse_hwid("Milan", "zz"), "expected hex digits"),
        (lambda: kds.parse_hwid("Milan", "٣" * 128), "expected hex digits"),
    ]
    for call, message in refusals:
        with pytest.raises(InvalidInput, match=re.escape(message)):
            call()


def test_what_a_report_asks_for(sim: SimKds, tmp_path: Path) -> None:
    c = real_case("snp-trustee-milan")  # version 2: no CPUID
    with pytest.raises(InvalidInput, match="a version 2 report does not name its product: give --product"):
        kds.report_ref(c.report, product=None, where="r")
    ref = kds.report_ref(c.report, product="Milan", where="r")
    assert (ref.product, ref.signing_key, ref.hwid, ref.tcb) == ("Milan", "vcek", c.chip_id, c.reported_tcb)
    vlek = real_case(VLEK_CASE)  # version 3, VLEK-signed: the product from CPUID, no chip to ask for
    ref = kds.report_ref(vlek.report, product=None, where="r")
    assert (ref.product, ref.signing_key, ref.hwid) == ("Milan", "vlek", None)
    with pytest.raises(InvalidInput, match="the report's CPUID says Milan, not Genoa"):
        kds.report_ref(vlek.report, product="Genoa", where="r")
    masked = bytearray(c.report)
    masked[0x1A0:0x1E0] = bytes(64)
    with pytest.raises(InvalidInput, match="CHIP_ID is zero"):
        kds.report_ref(bytes(masked), product="Milan", where="r")
    with pytest.raises(InvalidInput, match="byte 6 is reserved in the Turin TCB_VERSION layout"):
        kds.report_ref(c.report, product="Turin", where="r")  # a Milan TCB read as Turin's
    turin_tcb = bytearray(c.report)
    turin_tcb[0x186] = 0  # REPORTED_TCB byte 6: reserved on Turin
    with pytest.raises(InvalidInput, match="a Turin CHIP_ID uses bytes 0-7 only"):
        kds.report_ref(bytes(turin_tcb), product="Turin", where="r")
    # hex text (virtee's form) and binary read alike; anything else is refused
    assert kds.read_report_bytes(c.report.hex().encode() + b"\n", "r") == c.report
    assert kds.read_report_bytes(c.report, "r") == c.report
    with pytest.raises(InvalidInput, match="neither a 1184-byte ATTESTATION_REPORT nor its hex"):
        kds.read_report_bytes(c.report[:-1], "r")
    assert kds.report_ref(sim.report, product=None, where="r").product == "Genoa"


def test_bundle_entries_round_trip_and_cannot_lie(sim: SimKds) -> None:
    roots = [sim.pki.root_cert]
    chain = kds.snp_file_items((sim.pki.directory / "cert_chain.pem").read_bytes(), dev_roots=roots)
    crl = kds.snp_file_items(sim.pki.crl("vlek"), dev_roots=roots, crl_for="vlek")
    vcek_der = next(v for k, v in sim.files.items() if "?" in k)
    vcek = kds.snp_file_items(vcek_der, chains=chain, dev_roots=roots)
    items = [*vcek, *chain, *crl]  # the VCEK first: import still verifies it through the bundled chain
    docs = [kds.bundle_item_doc(i, "test", None) for i in items]
    again = kds.items_from_bundle(list(enumerate(docs)), dev_roots=roots)
    assert sorted(i.digest for i in again) == sorted(i.digest for i in items)
    with pytest.raises(UntrustedCollateralRoot):
        kds.items_from_bundle(list(enumerate(docs)))  # the dev root is not configured here
    lies: list[tuple[int, dict[str, Any], str]] = [
        (0, {"hwid": "00" * 64}, "items[0].hwid: says"),
        (0, {"tcb": "00" * 8}, "items[0].tcb: says"),
        (1, {"product": "Milan"}, "items[1].product: says 'Milan' but the content is 'Genoa'"),
        (2, {"signing_key": "vcek"}, "items[2].digest: says"),  # the side is part of the digest
        (2, {"root": "amd"}, "items[2].root: says 'amd' but the content is 'dev'"),
        (2, {"valid_until": "2099-01-01T00:00:00+00:00"}, "items[2].valid_until: says"),
        (1, {"extra": 1}, "unknown members ['extra']"),
        (2, {"kind": "snp_vlek"}, "is not snp_vcek, snp_cert_chain or snp_crl"),
        (2, {"crl": "zz"}, "items[2].crl: expected the hex of the DER"),
        (2, {"signing_key": "both"}, "expected vcek or vlek"),
    ]
    for index, change, message in lies:
        edited = [dict(d) for d in docs]
        edited[index].update(change)
        with pytest.raises(CollateralError, match=re.escape(message)):
            kds.items_from_bundle(list(enumerate(edited)), dev_roots=roots)
