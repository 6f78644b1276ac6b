"""``keybroker evidence verify --tee snp`` and ``keybroker policy test`` on SEV-SNP reports: the twelve
vendored corpus cases through the CLI, certificates in any order, simulated reports carrying their
certificate table, and the usage errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.vectors.corpus import load_cases, path
from typer.testing import CliRunner

from keybroker.cli.main import app
from keybroker.tee.sim.snp import SnpDevPki, snp_report
from keybroker.tee.snp.plugin import TCB_STATUS

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

runner = CliRunner()
SNP_CASES = load_cases("snp")
#: The check each rejecting case fails, by the corpus's reason.
_REASON_CHECK = {
    "VLEK cert expired 2025-12-10": "validity_window",
    "VCEK not signed by ASK / wrong chip": "cert_chain",
    "VCEK of another chip": "report_signature",
    "tampered report": "report_signature",
    "bad signature": "report_signature",
}


def _verify(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Exit code and output (with --json: stdout alone, the document; a warning goes to stderr)."""
    result = runner.invoke(app, ["evidence", "verify", "--data-dir", str(tmp_path / "none"), *args])
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_all_twelve_corpus_cases_give_their_verdict(tmp_path: Path) -> None:
    """The corpus vendors no AMD CRL current at its ``verify_at``: --allow-missing-crl, explicitly
    (``test_a_report_without_a_crl_is_rejected_unless_waived`` shows the default)."""
    assert len(SNP_CASES) == 12
    for case in SNP_CASES:
        # the chain before the leaf: the order of --cert does not matter
        code, out = _verify(
            tmp_path,
            "--allow-missing-crl",
            "--tee",
            "snp",
            "--report",
            str(path(case["report"])),
            "--cert",
            str(path(case["ca_chain"])),
            "--cert",
            str(path(case["vcek"])),
            "--at",
            str(case["verify_at"]),
            "--json",
        )
        doc = json.loads(out)
        if case["expect"]["verdict"] == "accept":
            assert code == 0, (case["id"], out)
            assert doc["verdict"] == "verified" and doc["failed_check"] is None
            assert doc["claims"]["tee"] == "snp" and doc["claims"]["product"] == "Milan"
            assert doc["status"] == TCB_STATUS and doc["sim"] is False and doc["root"] == "amd"
        else:
            assert code == 1, (case["id"], out)
            assert doc["verdict"] == "rejected" and doc["claims"] is None
            assert doc["failed_check"] == _REASON_CHECK[case["expect"]["reason"]], (case["id"], doc)
            assert doc["checks_passed"][:2] == ["parse", "signing_key"]


def test_a_report_without_a_crl_is_rejected_unless_waived(tmp_path: Path) -> None:
    """Offline, without a keybroker database: a CRL of the chain's ARK must be among the CRLs given
    (--cert) or carried; none -> rejected (exit 1) naming it. --allow-missing-crl waives it, warning."""
    case = next(c for c in SNP_CASES if c["id"] == "snp-trustee-milan")
    args = ["--report", str(path(case["report"])), "--cert", str(path(case["vcek"])), "--at", "1748736000"]
    result = runner.invoke(app, ["evidence", "verify", "--data-dir", str(tmp_path / "none"), *args, "--json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == 1 and doc["failed_check"] == "crl", result.output
    assert "no CRL issued by ARK-Milan was given" in doc["reason"] and "/vcek/v1/Milan/crl" in doc["reason"]
    result = runner.invoke(
        app, ["evidence", "verify", "--data-dir", str(tmp_path / "none"), *args, "--allow-missing-crl"]
    )
    assert result.exit_code == 0 and "VERIFIED" in result.stdout, result.output
    assert "warning: --allow-missing-crl" in " ".join(result.stderr.split())


def test_the_human_output_and_the_shipped_ask(tmp_path: Path) -> None:
    case = next(c for c in SNP_CASES if c["id"] == "snp-trustee-vlek")
    # the VLEK alone: AMD's ASVK shipped with keybroker completes the chain
    code, out = _verify(
        tmp_path,
        "--allow-missing-crl",
        "--report",
        str(path(case["report"])),
        "--cert",
        str(path(case["vcek"])),
        "--at",
        "1748736000",
    )
    assert code == 0, out
    assert "VERIFIED" in out and "VLEK (CSP CN=cc-us-east-2.amazonaws.com)" in out
    assert "NoVendorStatus" in out and "measurement" in out


def test_simulated_reports_carry_their_certificates_and_need_the_dev_ark(tmp_path: Path) -> None:
    pki = SnpDevPki.create(tmp_path / "snp", product="Genoa")
    made = snp_report(pki)
    evidence = tmp_path / "report.bin"
    evidence.write_bytes(made.report + made.cert_table)
    code, out = _verify(tmp_path, "--report", str(evidence), "--json")
    assert code == 1 and json.loads(out)["failed_check"] == "cert_chain"
    code, out = _verify(
        tmp_path, "--report", str(evidence), "--trust-root", str(pki.directory / "ark.pem"), "--json"
    )
    doc = json.loads(out)
    assert code == 0 and doc["sim"] is True and doc["root"] == "dev", out
    # hex text of the report alone, with its certificates as files (DER VCEK, PEM chain) and the
    # ARK's CRL (PEM): without it, rejected (no CRL of the ARK)
    (tmp_path / "report.hex").write_text(made.report.hex() + "\n")
    (tmp_path / "vcek.der").write_bytes(made.signer.public_bytes(Encoding.DER))
    (tmp_path / "crl.pem").write_bytes(x509.load_der_x509_crl(pki.crl("vcek")).public_bytes(Encoding.PEM))
    files = ["--cert", str(pki.directory / "cert_chain.pem"), "--cert", str(tmp_path / "vcek.der")]
    base = ["--report", str(tmp_path / "report.hex"), *files, "--trust-root", str(pki.directory / "ark.pem")]
    code, out = _verify(tmp_path, *base, "--json")
    assert code == 1 and json.loads(out)["failed_check"] == "crl", out
    code, out = _verify(tmp_path, *base, "--cert", str(tmp_path / "crl.pem"))
    assert code == 0, out
    # the same CRL revoking the ASK: rejected
    pki.revoke_intermediate("vcek")
    (tmp_path / "crl.pem").write_bytes(x509.load_der_x509_crl(pki.crl("vcek")).public_bytes(Encoding.PEM))
    code, out = _verify(tmp_path, *base, "--cert", str(tmp_path / "crl.pem"), "--json")
    assert (
        code == 1 and json.loads(out)["failed_check"] == "crl" and "is revoked" in json.loads(out)["reason"]
    )
    # the report alone, no certificates and no keybroker database to ask: a clear refusal
    (tmp_path / "alone.bin").write_bytes(made.report)
    code, out = _verify(tmp_path, "--report", str(tmp_path / "alone.bin"))
    flat = " ".join(out.split())
    assert code == 1 and "to look up the report's VCEK: give --cert, or --data-dir/--database" in flat, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tee", "tdx", "--report", "amd-sev-snp/coco-trustee/test-report.bin"], "not TDX"),
        (
            ["--tee", "sev", "--report", "amd-sev-snp/coco-trustee/test-report.bin"],
            "--tee 'sev' is not one of",
        ),
        (
            [
                "--quote",
                "intel-dcap/phala-dcap-qvl/tdx_quote",
                "--cert",
                "amd-sev-snp/coco-trustee/test-vcek.der",
            ],
            "--cert is for SEV-SNP reports",
        ),
        (
            [
                "--report",
                "amd-sev-snp/coco-trustee/test-report.bin",
                "--cert",
                "amd-sev-snp/coco-trustee/test-vcek.der",
                "--collateral",
                "amd-sev-snp/coco-trustee/test-vcek.der",
            ],
            "not both",
        ),
        (
            [
                "--report",
                "amd-sev-snp/coco-trustee/test-report.bin",
                "--cert",
                "intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json",
            ],
            "neither PEM nor a DER certificate",
        ),
        (["--report", "amd-sev-snp/virtee-sev/vcek_milan.der"], "raw, hex or base64"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    resolved = [str(path(a)) if "/" in a else a for a in args]
    code, out = _verify(tmp_path, *resolved)
    assert code == 2, out
    assert message in out


def _policy_test(tmp_path: Path, policy: dict[str, Any], case: dict[str, Any]) -> tuple[int, str]:
    (tmp_path / "p.json").write_text(json.dumps(policy))
    result = runner.invoke(
        app,
        [
            "policy",
            "test",
            "--policy",
            str(tmp_path / "p.json"),
            "--report",
            str(path(case["report"])),
            "--cert",
            str(path(case["vcek"])),
            "--cert",
            str(path(case["ca_chain"])),
            "--at",
            str(case["verify_at"]),
            "--data-dir",
            str(tmp_path / "none"),
            "--allow-missing-crl",  # the corpus has no AMD CRL of its time
        ],
    )
    return result.exit_code, result.output


def test_policy_test_on_real_reports(tmp_path: Path) -> None:
    trustee = next(c for c in SNP_CASES if c["id"] == "snp-trustee-milan")
    gsg = next(c for c in SNP_CASES if c["id"] == "snp-gsg-milan")  # a debug guest
    code, out = _verify(
        tmp_path,
        "--allow-missing-crl",
        "--report",
        str(path(trustee["report"])),
        "--cert",
        str(path(trustee["vcek"])),
        "--at",
        "1748736000",
        "--json",
    )
    assert code == 0, out
    measurement = json.loads(out)["claims"]["measurement"]
    policy = {"attestation_type": ["SNP"], "snp": {"attributes": {"measurement": [measurement]}}}
    code, out = _policy_test(tmp_path, policy, trustee)
    assert code == 0 and "ALLOWED" in out and "NoVendorStatus" in out, out
    code, out = _policy_test(tmp_path, policy, gsg)
    assert code == 1 and "DENIED" in out
    assert "debug guest (POLICY.DEBUG is set) and the policy does not set allow_debug" in out
    assert "is not in the policy's list" in out  # another guest's measurement


def test_without_certificates_the_data_dirs_kds_cache_is_asked(tmp_path: Path) -> None:
    """As the server does: a report with no certificate table and no --cert is verified with the
    VCEK, chain and CRL in the KDS cache of the keybroker named by --data-dir (--dev: its sim ARK)."""
    from keybroker.api.services import Services
    from keybroker.collateral.kds import chain_items, crl_item, vcek_item
    from keybroker.collateral.kds_store import KdsStore
    from keybroker.collateral.trust import snp_dev_pki_dir
    from keybroker.config import Settings

    data = tmp_path / "data"
    services = Services.build(Settings(data_dir=data, dev=True))
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    made = snp_report(pki)
    (tmp_path / "alone.bin").write_bytes(made.report)
    verify = ["evidence", "verify", "--data-dir", str(data), "--dev", "--report", str(tmp_path / "alone.bin")]
    result = runner.invoke(app, [*verify, "--json"])
    assert result.exit_code == 1 and "collateral fetch --snp" in " ".join(result.output.split()), (
        result.output
    )

    dev = (pki.root_cert,)
    chain = chain_items([c.public_bytes(Encoding.DER) for c in made.chain], dev_roots=dev)
    crl = crl_item(pki.crl("vcek"), signing_key="vcek", dev_roots=dev)
    vcek = vcek_item(made.signer.public_bytes(Encoding.DER), chains=chain, dev_roots=dev)
    KdsStore(services.db).import_items([*chain, crl, vcek], source="test")
    services.db.dispose()
    result = runner.invoke(app, [*verify, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["verdict"] == "verified"
