"""The real AMD SEV-SNP material of the corpus, as the KDS cache stores it, and a simulator PKI
laid out as AMD's KDS serves it (for the fetch tests' loopback KDS).

Real reports verify at the corpus cases' ``verify_at`` (2025-06-01): every certificate here has
long expired or will, so tests never verify at wall-clock time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from tests.vectors.corpus import case, path, read_bytes, verify_at

from keybroker.collateral import kds
from keybroker.collateral.kds import SnpItem
from keybroker.tee.sim.snp import SnpDevPki, snp_report
from keybroker.tee.snp.abi import parse_report

#: The corpus SNP cases' verification time (cases.json ``verify_at``).
CORPUS_AT = verify_at(case("snp-trustee-milan"))
#: When the simulator PKIs of these tests are issued, and when their evidence verifies.
SIM_ISSUED = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
SIM_AT = SIM_ISSUED + dt.timedelta(hours=1)

CHAIN_FILES = {
    "Milan": "amd-sev-snp/coco-trustee/milan_ask_ark_asvk.pem",
    "Genoa": "amd-sev-snp/coco-trustee/genoa_ask_ark_asvk.pem",
    "Turin": "amd-sev-snp/coco-trustee/turin_ask_ark_asvk.pem",
}
TURIN_VCEK = "amd-sev-snp/virtee-sev/vcek_turin.der"
VLEK = "amd-sev-snp/coco-trustee/test-vlek.der"


@dataclass(frozen=True)
class RealCase:
    """A real report of the corpus (cases.json, type "snp", verdict accept) and its VCEK/VLEK."""

    id: str
    report: bytes
    signer: bytes
    signer_path: str
    at: dt.datetime

    @property
    def chip_id(self) -> bytes:
        return parse_report(self.report).chip_id

    @property
    def reported_tcb(self) -> bytes:
        return parse_report(self.report).reported_tcb

    @property
    def report_path(self) -> Path:
        return path(case(self.id)["report"])


def real_case(case_id: str) -> RealCase:
    c = case(case_id)
    raw = read_bytes(c["report"])
    report = bytes.fromhex(raw.decode().strip()) if c["report"].endswith(".hex") else raw
    return RealCase(case_id, report, read_bytes(c["vcek"]), c["vcek"], verify_at(c))


#: The three real Milan VCEK reports (versions 2) and the VLEK one (version 3).
VCEK_CASES = ("snp-gsg-milan", "snp-virtee-milan", "snp-trustee-milan")
VLEK_CASE = "snp-trustee-vlek"


def real_chains() -> list[SnpItem]:
    """ASK+ARK and ASVK+ARK of every product, from the corpus's AMD chain files."""
    return [i for rel in CHAIN_FILES.values() for i in kds.snp_file_items(read_bytes(rel))]


def real_vceks(chains: list[SnpItem]) -> list[SnpItem]:
    """The VCEKs of the three real Milan reports and the real Turin VCEK."""
    files = [real_case(c).signer_path for c in VCEK_CASES] + [TURIN_VCEK]
    return [i for rel in files for i in kds.snp_file_items(read_bytes(rel), chains=chains)]


def real_items() -> list[SnpItem]:
    chains = real_chains()
    return chains + real_vceks(chains)


# --- a simulator PKI in KDS layout ---------------------------------------------------------------


@dataclass(frozen=True)
class SimKds:
    """A simulator PKI (dev ARK) with one report and the files AMD's KDS would serve for it."""

    pki: SnpDevPki
    report: bytes
    #: path (with query) -> body, as AMD's KDS answers.
    files: dict[str, bytes]

    @property
    def ark_pem(self) -> Path:
        return self.pki.directory / "ark.pem"


def sim_kds(directory: Path, product: str = "Genoa") -> SimKds:
    pki = SnpDevPki.create(directory, product=product, now=SIM_ISSUED)  # type: ignore[arg-type]
    ev = snp_report(pki, now=SIM_ISSUED)
    unverified = parse_report(ev.report)
    ref = kds.report_ref(ev.report, product=None, where="sim")
    assert ref.hwid is not None and ref.tcb == unverified.reported_tcb
    query = "&".join(f"{k}={v}" for k, v in kds.vcek_params(ref.product, ref.tcb).items())
    p = pki.product
    files = {
        f"/vcek/v1/{p}/cert_chain": (pki.directory / "cert_chain.pem").read_bytes(),
        f"/vlek/v1/{p}/cert_chain": (pki.directory / "vlek_cert_chain.pem").read_bytes(),
        f"/vcek/v1/{p}/crl": pki.crl("vcek"),
        f"/vlek/v1/{p}/crl": pki.crl("vlek"),
        f"/vcek/v1/{p}/{ref.hwid.hex()}?{query}": ev.signer.public_bytes(Encoding.DER),
    }
    return SimKds(pki, ev.report, files)
