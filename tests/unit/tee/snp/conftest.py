"""Fixtures for the SEV-SNP tests: corpus helpers and dev PKIs issued at a pinned time."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.vectors.corpus import read_bytes

from keybroker.tee.sim.snp import SnpDevPki
from keybroker.tee.snp.certs import load_certificate_ders

ISSUED = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
#: When the simulator tests verify: an hour after issue.
SIM_AT = ISSUED + dt.timedelta(hours=1)
#: When the corpus SNP cases verify (cases.json verify_at, 2025-06-01).
CORPUS_AT = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)

_AZ = "azure-vtpm/coco-trustee/az-snp-vtpm/"


@dataclass(frozen=True)
class RealReport:
    """A real report with its signing certificate and AMD chain."""

    name: str
    report: bytes
    signer: bytes
    chain: tuple[bytes, ...]


def case_report(case: dict[str, Any]) -> bytes:
    raw = read_bytes(case["report"])
    return bytes.fromhex(raw.decode().strip()) if case["report"].endswith(".hex") else raw


def case_chain(case: dict[str, Any]) -> tuple[bytes, ...]:
    return load_certificate_ders(read_bytes(case["ca_chain"]))


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def azure_report(name: str) -> tuple[bytes, bytes]:
    """The SNP report inside an Azure HCL report (bytes 0x20..0x4C0) and its VCEK (DER)."""
    doc = json.loads(read_bytes(_AZ + name))
    hcl = bytes(doc["report"]) if "report" in doc else _b64url(doc["hcl_report"])
    vcek = doc["vcek"]
    der = load_certificate_ders(vcek.encode())[0] if vcek.startswith("-----") else _b64url(vcek)
    return hcl[0x20 : 0x20 + 0x4A0], der


def _milan(rel: str) -> tuple[bytes, ...]:
    return load_certificate_ders(read_bytes(rel))


def real_reports() -> list[RealReport]:
    """Every real report of the corpus with the certificates that verify it."""
    milan = _milan("amd-sev-snp/coco-trustee/milan_ask_ark_asvk.pem")
    genoa = _milan("amd-sev-snp/coco-trustee/genoa_ask_ark_asvk.pem")
    out = [
        RealReport(
            "gsg-milan-v2",
            read_bytes("amd-sev-snp/google-go-sev-guest/attestation.bin"),
            read_bytes("amd-sev-snp/google-go-sev-guest/vcek.der"),
            _milan("amd-sev-snp/google-go-sev-guest/ask_ark_milan.pem"),
        ),
        RealReport(
            "virtee-milan-v2",
            bytes.fromhex(read_bytes("amd-sev-snp/virtee-sev/report_milan.hex").decode().strip()),
            read_bytes("amd-sev-snp/virtee-sev/vcek_milan.der"),
            _milan("amd-sev-snp/virtee-sev/cert_chain_milan"),
        ),
        RealReport(
            "trustee-milan-v2",
            read_bytes("amd-sev-snp/coco-trustee/test-report.bin"),
            read_bytes("amd-sev-snp/coco-trustee/test-vcek.der"),
            milan,
        ),
        RealReport(
            "trustee-milan-vlek-v3",
            read_bytes("amd-sev-snp/coco-trustee/test-vlek-report.bin"),
            read_bytes("amd-sev-snp/coco-trustee/test-vlek.der"),
            milan,
        ),
    ]
    for name, chain in (("evidence-v1.json", milan), ("evidence-genoa.json", genoa)):
        report, vcek = azure_report(name)
        out.append(RealReport(f"azure-{name.removesuffix('.json')}-v3", report, vcek, chain))
    hcl = read_bytes(_AZ + "hcl-report.bin")
    out.append(
        RealReport(
            "azure-hcl-report-v2",
            hcl[0x20 : 0x20 + 0x4A0],
            load_certificate_ders(read_bytes(_AZ + "vcek.pem"))[0],
            milan,
        )
    )
    return out


@pytest.fixture(scope="session")
def genoa_pki(tmp_path_factory: pytest.TempPathFactory) -> SnpDevPki:
    """A shared Genoa dev PKI. Never revoke in it: tests that revoke use their own."""
    return SnpDevPki.create(tmp_path_factory.mktemp("snp") / "genoa", product="Genoa", now=ISSUED)


@pytest.fixture(scope="session")
def turin_pki(tmp_path_factory: pytest.TempPathFactory) -> SnpDevPki:
    return SnpDevPki.create(tmp_path_factory.mktemp("snp") / "turin", product="Turin", now=ISSUED)


@pytest.fixture
def fresh_genoa_pki(genoa_pki: SnpDevPki, tmp_path: Path) -> SnpDevPki:
    """A private copy of the Genoa dev PKI's files (revocations stay in it)."""
    import shutil

    target = tmp_path / "genoa"
    shutil.copytree(genoa_pki.directory, target)
    return SnpDevPki.load(target)
