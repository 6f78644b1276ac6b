"""`keybroker policy test` on the real corpus quotes at their verify_at, and on simulator evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.vectors import corpus
from typer.testing import CliRunner

from keybroker.cli.main import app
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import verify_quote

runner = CliRunner()
ACCEPTED = [
    c
    for c in corpus.load_cases("dcap")
    if c["expect"]["verdict"] in ("accept", "policy-dependent") and "status" in c["expect"]
]


def _policy_from_claims(claims: dict[str, Any], tee: str) -> dict[str, Any]:
    if tee == "sgx":
        return {
            "attestation_type": ["SGX"],
            "sgx": {
                "attributes": {
                    "mrsigner": [claims["mr_signer"]],
                    "isvprodid": [claims["isv_prod_id"]],
                    "mrenclave": [claims["mr_enclave"]],
                    "isvsvn": claims["isv_svn"],
                }
            },
            "allow_debug": bool(claims["debug"]),
        }
    return {
        "attestation_type": ["TDX"],
        "tdx": {
            "attributes": {
                "mrsignerseam": [claims["mr_signer_seam"]],
                "mrseam": [claims["mr_seam"]],
                "mrtd": [claims["mr_td"]],
                "rtmr0": claims["rtmr0"],
            }
        },
        "allow_debug": bool(claims["debug"]),
    }


def _run(tmp_path: Path, c: dict[str, Any], policy: dict[str, Any], *extra: str) -> Any:
    (tmp_path / "p.json").write_text(json.dumps(policy))
    return runner.invoke(
        app,
        [
            "policy",
            "test",
            "--policy",
            str(tmp_path / "p.json"),
            "--quote",
            str(corpus.path(c["quote"])),
            "--collateral",
            str(corpus.path(c["collateral"])),
            "--at",
            str(c["verify_at"]),
            *extra,
        ],
    )


@pytest.mark.parametrize("c", ACCEPTED, ids=[c["id"] for c in ACCEPTED])
def test_corpus_quote_against_its_own_claims(tmp_path: Path, c: dict[str, Any]) -> None:
    verified = verify_quote(
        corpus.read_bytes(c["quote"]),
        QuoteCollateral.from_json(corpus.read_text(c["collateral"])),
        at=corpus.verify_at(c),
    )
    claims = verified.claims.to_dict()
    policy = _policy_from_claims(claims, verified.tee)
    r = _run(tmp_path, c, policy)
    assert r.exit_code == 0, r.output
    assert "ALLOWED" in r.output
    # one field changed: denied, and the reason names the field
    if verified.tee == "sgx":
        policy["sgx"]["attributes"]["isvsvn"] = claims["isv_svn"] + 1
        fragment = f"isvsvn {claims['isv_svn']} is below the policy minimum {claims['isv_svn'] + 1}"
    else:
        policy["tdx"]["attributes"]["mrtd"] = ["ab" * 48]
        fragment = "mrtd"
    r = _run(tmp_path, c, policy)
    assert r.exit_code == 1 and fragment in r.output
    # enforce_tcb_upto_date denies anything but UpToDate
    section = policy["sgx" if verified.tee == "sgx" else "tdx"]["attributes"]
    section.update({"enforce_tcb_upto_date": True})
    if verified.tee == "sgx":
        section["isvsvn"] = claims["isv_svn"]
    else:
        section["mrtd"] = [claims["mr_td"]]
    r = _run(tmp_path, c, policy, "--json")
    decision = json.loads(r.output)
    assert decision["allowed"] is (verified.status == "UpToDate")


def test_usage_errors(tmp_path: Path) -> None:
    c = corpus.case("dcap-sgx-phala")
    r = _run(tmp_path, c, {"attestation_type": ["SGX"]})
    assert r.exit_code == 2 and "sgx" in r.output
    r = runner.invoke(
        app, ["policy", "test", "--policy", str(tmp_path / "none.json"), "--quote", "x", "--collateral", "y"]
    )
    assert r.exit_code == 2
    (tmp_path / "bad.rego").write_text("package nope\nallow := true\n")
    r = runner.invoke(
        app,
        [
            "policy",
            "test",
            "--policy",
            str(tmp_path / "bad.rego"),
            "--quote",
            str(corpus.path(c["quote"])),
            "--collateral",
            str(corpus.path(c["collateral"])),
        ],
    )
    assert r.exit_code == 2


def test_rego_policy_and_rejected_evidence(tmp_path: Path) -> None:
    c = corpus.case("dcap-sgx-phala")
    (tmp_path / "p.rego").write_text(
        'package keybroker\ndefault allow := false\nallow if { input.tee == "sgx"; input.tcb.status == "ConfigurationAndSWHardeningNeeded" }\n'
    )
    args = [
        "policy",
        "test",
        "--policy",
        str(tmp_path / "p.rego"),
        "--quote",
        str(corpus.path(c["quote"])),
        "--collateral",
        str(corpus.path(c["collateral"])),
    ]
    r = runner.invoke(app, [*args, "--at", str(c["verify_at"])])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args, "--at", "2030-01-01T00:00:00Z"])  # collateral long expired
    assert r.exit_code == 1 and "validity_window" in r.output
