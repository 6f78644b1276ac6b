"""``keybroker evidence verify --tee tpm`` and ``--tee az-snp-vtpm|az-tdx-vtpm`` on every corpus case:
the 11 TPM quotes (GCE vTPM quotes with their AK chains in SHA-1/256/384 banks, an emulator quote,
wrong nonces, a tampered quote, an AK mismatch) and the 6 Azure vTPM evidences (SNP v0/v1/v2/Genoa,
TDX v0/v1) give their expected verdict, with the options exactly as the command documents them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.vectors.corpus import case, load_cases, path, verify_at
from typer.testing import CliRunner

from keybroker.cli.evidence import app

pytestmark = pytest.mark.filterwarnings("ignore:Attribute.s length:UserWarning")  # GCE CNs exceed 64

runner = CliRunner()
#: The GCE AK certificates are valid 2021-08-31 .. 2051-08-24; the corpus gives no time for them.
GCE_AT = "2025-06-01T00:00:00Z"
KEYLIME_PCRS = "tpm2-emulator/keylime/quotepcr.out"
TD_CASE = case("dcap-tdx-azure-td")
#: The quotes' extraData: "challenge", or the 48-byte report data evidence v2 and Genoa's test used.
AZURE_NONCES = {
    "evidence-v2.json": "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef",
    "evidence-genoa.json": "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f",
}
VERDICTS = {"accept": "verified", "reject": "rejected"}


def _run(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["verify", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)  # a warning goes to stderr


def tpm_args(c: dict[str, Any]) -> list[str]:
    args = ["--tee", "tpm", "--quote", str(path(c["message"])), "--signature", str(path(c["signature"]))]
    args += ["--ak", str(path(c["ak_pub"])), "--nonce", c["nonce_hex"], "--at", GCE_AT]
    if "ak_cert" in c:
        args += ["--ak-cert", str(path(c["ak_cert"]))]
        for ca in c["ak_ca"]:
            args += ["--ak-ca", str(path(ca))]
    if "pcrs" in c:
        args += ["--pcrs", str(path(c["pcrs"]))]
    elif c["message"].startswith("tpm2-emulator/keylime") or c["message"].endswith("keylime_quote.out_flip"):
        args += ["--pcrs", str(path(KEYLIME_PCRS))]  # keylime's quote in tpm2-tools' PCR file
    return args


@pytest.mark.parametrize("c", load_cases("tpm2-quote"), ids=lambda c: c["id"])
def test_tpm_corpus_case(c: dict[str, Any]) -> None:
    code, doc = _run(*tpm_args(c))
    assert doc["verdict"] == VERDICTS[c["expect"]["verdict"]], doc
    assert code == (0 if doc["verdict"] == "verified" else 1)
    if doc["verdict"] == "verified":
        claims = doc["claims"]
        assert doc["tee"] == "tpm" and claims["quote"]["extra_data"] == c["nonce_hex"]
        assert claims["ak"]["trust"]["mode"] == ("certificate" if "ak_cert" in c else "given")
        assert doc["report_data"] == c["nonce_hex"]
        return
    assert doc["failed_check"] in {"report_data", "signature", "pcr_selection"}, doc


def test_the_ak_certificate_must_chain_to_the_cas_given() -> None:
    c = case("tpm-gce-gce-cos-85-nonce9009-sha256")
    args = tpm_args(c)
    root = args.index(str(path(c["ak_ca"][1])))
    del args[root - 1 : root + 1]  # the intermediate alone, without the root
    code, doc = _run(*args)
    assert code == 1 and doc["failed_check"] == "ak_certificate", doc


def test_without_a_nonce_the_extra_data_is_a_claim() -> None:
    c = case("tpm-gce-wrong-nonce")
    args = tpm_args(case("tpm-gce-gce-cos-85-nonce9009-sha256"))
    i = args.index("--nonce")
    del args[i : i + 2]
    code, doc = _run(*args)
    assert code == 0 and doc["claims"]["quote"]["extra_data"] == "9009" and c["nonce_hex"] != "9009"
    assert doc["claims"]["quote"]["nonce_checked"] is False
    # --nonce "" means a quote taken without one: this quote has one, so it is rejected
    code, doc = _run(*args, "--nonce", "")
    assert code == 1 and doc["verdict"] == "rejected" and doc["failed_check"] == "report_data"


def _azure_args(c: dict[str, Any]) -> list[str]:
    tee = "az-snp-vtpm" if c["hw"].startswith("snp") else "az-tdx-vtpm"
    nonce = AZURE_NONCES.get(c["evidence"].rsplit("/", 1)[1], b"challenge".hex())
    args = ["--tee", tee, "--evidence", str(path(c["evidence"])), "--nonce", nonce]
    args += ["--at", str(TD_CASE["verify_at"])]
    if tee == "az-tdx-vtpm":
        args += ["--collateral", str(path(TD_CASE["collateral"]))]
    else:  # the corpus has no AMD CRL of its time (test_azure_snp_needs_a_crl_by_default)
        args += ["--allow-missing-crl"]
    return args


def test_azure_snp_needs_a_crl_by_default() -> None:
    c = next(c for c in load_cases("az-vtpm") if c["hw"].startswith("snp"))
    args = [a for a in _azure_args(c) if a != "--allow-missing-crl"]
    code, doc = _run(*args)
    assert code == 1 and doc["failed_check"] == "crl" and "no CRL issued by ARK-" in doc["reason"], doc


@pytest.mark.parametrize("c", load_cases("az-vtpm"), ids=lambda c: c["id"])
def test_azure_corpus_case(c: dict[str, Any]) -> None:
    code, doc = _run(*_azure_args(c))
    assert doc["verdict"] == VERDICTS[c["expect"]["verdict"]] == "verified", doc
    claims = doc["claims"]
    assert len(claims["tpm"]["pcrs"]["sha256"]) == 24 and claims["hcl"]["vm_configuration"]["secure-boot"]
    hardware = "snp" if c["hw"].startswith("snp") else "tdx"
    assert hardware in claims and claims["debug"] is False
    assert doc["status"] == ("NoVendorStatus" if hardware == "snp" else "OutOfDate")


@pytest.mark.parametrize("c", load_cases("az-vtpm"), ids=lambda c: c["id"])
def test_azure_wrong_nonce_is_rejected(c: dict[str, Any]) -> None:
    args = _azure_args(c)
    args[args.index("--nonce") + 1] = "00" * 32
    code, doc = _run(*args)
    assert code == 1 and doc["verdict"] == "rejected" and doc["failed_check"] == "report_data", doc


def test_options_of_another_tee_are_usage_errors() -> None:
    c = case("tpm-keylime-emulator")
    result = runner.invoke(app, ["verify", *tpm_args(c), "--evidence", str(path(c["message"]))])
    assert result.exit_code == 2 and "--evidence is not an option of --tee tpm" in result.output
    result = runner.invoke(app, ["verify", "--tee", "tpm", "--quote", str(path(c["message"]))])
    assert result.exit_code == 2 and "needs --quote, --signature and --ak" in result.output
    result = runner.invoke(app, ["verify", "--tee", "tpm", *tpm_args(c)[2:], "--nonce", "zz"])
    assert result.exit_code == 2 and "not hex" in result.output
    at = str(verify_at(TD_CASE).timestamp())
    result = runner.invoke(app, ["verify", "--tee", "az-snp-vtpm", "--at", at])
    assert result.exit_code == 2 and "needs --evidence" in result.output
