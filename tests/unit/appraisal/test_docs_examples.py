"""Every tagged example in docs/policies.md, executed: the docs cannot drift from the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.helpers.sim_evidence import AT, SimEvidence, SimSnpEvidence
from typer.testing import CliRunner

from keybroker.appraisal import rego, secl
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.cli.main import app
from keybroker.tee.sim import DEFAULT_MRTD
from keybroker.tee.sim.snp import DEFAULT_MEASUREMENT, DEFAULT_POLICY

DOC = Path(__file__).resolve().parents[3] / "docs" / "policies.md"
_EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)\n```", re.DOTALL)


def _examples() -> dict[str, str]:
    found = {m.group(1): m.group(3) for m in _EXAMPLE.finditer(DOC.read_text())}
    assert found, "no tagged examples in docs/policies.md"
    return found


EXAMPLES = _examples()


def _json(name: str) -> Any:
    return json.loads(EXAMPLES[name])


@pytest.fixture(scope="module")
def sgx_doc(sim: SimEvidence) -> dict[str, Any]:
    verified = sim.verify("sgx", isvsvn=2, tcb="swhardening")
    return dict(appraisal_input(verified, client_permissions=["nginx", "USA"]))


def test_every_example_is_tested() -> None:
    assert set(EXAMPLES) == {
        "input-sgx",
        "secl-sgx",
        "decision-secl-sgx",
        "secl-tdx",
        "secl-tpm",
        "rego-sgx",
        "decision-rego-sgx",
        "rego-tdx-reason-object",
        "secl-snp",
        "decision-secl-snp",
    }


def test_input_document(sgx_doc: dict[str, Any]) -> None:
    assert _json("input-sgx") == sgx_doc


def _policy_test(sim: SimEvidence, tmp_path: Path, policy_file: str, policy: str) -> dict[str, Any]:
    """What the doc says it is: ``keybroker policy test ... --client-permissions nginx,USA --json``
    on a quote of the enclave of the input document (ISVSVN 2, TCB needing SW hardening)."""
    (tmp_path / policy_file).write_text(policy)
    quote = tmp_path / "sgx.quote"
    quote.write_bytes(sim.quote("sgx", isvsvn=2, tcb="swhardening"))
    collateral = tmp_path / "collateral.json"
    collateral.write_text(sim.pki.collateral_json("sgx"))
    r = CliRunner().invoke(
        app,
        ["policy", "test", "--policy", str(tmp_path / policy_file), "--quote", str(quote)]
        + [
            "--collateral",
            str(collateral),
            "--at",
            AT.isoformat(),
            "--trust-root",
            str(sim.pki.root_pem_path),
        ]
        + ["--client-permissions", "nginx,USA", "--json"],
    )
    decision: dict[str, Any] = json.loads(r.output)
    return decision


def test_secl_sgx_decision(sim: SimEvidence, tmp_path: Path) -> None:
    policy = TransferPolicyBody.model_validate(_json("secl-sgx"))
    verified = sim.verify("sgx", isvsvn=2, tcb="swhardening")
    d = secl.evaluate(policy, verified, client_permissions=["nginx", "USA"], policy_id="example-sgx.json")
    assert d.to_dict() == _json("decision-secl-sgx")
    assert _policy_test(sim, tmp_path, "example-sgx.json", EXAMPLES["secl-sgx"]) == _json("decision-secl-sgx")


def test_secl_tdx_allows_the_default_td(sim: SimEvidence) -> None:
    policy = TransferPolicyBody.model_validate(_json("secl-tdx"))
    d = secl.evaluate(policy, sim.verify("tdx"), client_permissions=None, policy_id="example-tdx")
    assert d.allowed, d.reasons
    denied = secl.evaluate(policy, sim.verify("tdx", tcb="outofdate"), client_permissions=None, policy_id="x")
    assert denied.reasons[0].startswith("TCB status OutOfDate is not UpToDate")


def test_rego_sgx_decision(sgx_doc: dict[str, Any], sim: SimEvidence, tmp_path: Path) -> None:
    assert _policy_test(sim, tmp_path, "example.rego", EXAMPLES["rego-sgx"]) == _json("decision-rego-sgx")
    policy = rego.compile_policy(EXAMPLES["rego-sgx"], policy_id="example.rego")
    assert rego.evaluate(policy, sgx_doc).to_dict() == _json("decision-rego-sgx")
    ok = dict(appraisal_input(sim.verify("sgx", isvsvn=3), client_permissions=["nginx"]))
    assert rego.evaluate(policy, ok).allowed
    assert not rego.evaluate(policy, {**ok, "client_permissions": None}).allowed


def test_rego_reason_object(sim: SimEvidence) -> None:
    policy = rego.compile_policy(EXAMPLES["rego-tdx-reason-object"])
    assert rego.evaluate(policy, dict(appraisal_input(sim.verify("tdx"), client_permissions=None))).allowed
    wrong = dict(appraisal_input(sim.verify("tdx", mrtd=b"\x07" * 48), client_permissions=None))
    d = rego.evaluate(policy, wrong)
    assert d.public_reasons == (f"mrtd {'07' * 48} is not allowed",)
    assert d.reasons == (f"mrtd {'07' * 48} is not allowed (expected {DEFAULT_MRTD.hex()})",)


def test_tpm_example_allows_the_gce_machine_it_was_made_from() -> None:
    """The ``secl-tpm`` example, on the GCE quote and event log of the corpus (the AK certified by the
    ``gce`` AK root store); with another dbx it denies, naming the clause."""
    from datetime import UTC, datetime

    from cryptography import x509
    from tests.vectors.corpus import read_bytes

    from keybroker.appraisal.registry import REGISTRY
    from keybroker.cli.evidence_tpm import tpm_cli_evidence
    from keybroker.tee.tpm.trust import TpmTrust
    from keybroker.tee.trust import EvidenceTrust

    g = "tpm2-gce/go-tpm-tools/"
    q = g + "extracted/gce-cos-85-nonce9009/"
    evidence = tpm_cli_evidence(
        quote=read_bytes(q + "quote_sha256.msg"),
        signature=read_bytes(q + "quote_sha256.sig"),
        ak=read_bytes(q + "ak.tpm2b_public"),
        pcrs=read_bytes(q + "pcrs_sha256.json"),
        ak_cert=read_bytes(q + "ak_cert.der"),
        ak_ca=[],
        event_log=read_bytes(q + "event_log.bin"),
    )
    roots = tuple(
        x509.load_der_x509_certificate(read_bytes(g + f))
        for f in ("ca/tpm_ek_intermediate_2.crt", "ca/tpm_ek_root_1.cer")
    )
    verifier = REGISTRY.verifier(EvidenceTrust(tpm=TpmTrust(ak_roots={"gce": roots})))
    verified = verifier.verify("tpm", evidence, bytes.fromhex("9009"), at=datetime(2025, 6, 1, tzinfo=UTC))
    policy = _json("secl-tpm")
    decision = secl.evaluate(
        TransferPolicyBody.model_validate(policy), verified, client_permissions=None, policy_id="p"
    )
    assert decision.allowed, decision.reasons
    policy["tpm"]["attributes"]["event_log"]["dbx"] = ["00" * 32]
    denied = secl.evaluate(
        TransferPolicyBody.model_validate(policy), verified, client_permissions=None, policy_id="p"
    )
    assert [r.check for r in denied.findings] == ["dbx"]


def test_secl_snp_decision(sim_snp: SimSnpEvidence, tmp_path: Path) -> None:
    """The doc's SNP policy through ``keybroker policy test`` on the simulator's default guest in
    debug mode, with its certificate table and the dev ARK trusted."""
    policy = tmp_path / "example-snp.json"
    policy.write_text(EXAMPLES["secl-snp"])
    evidence = tmp_path / "guest.evidence"
    evidence.write_bytes(sim_snp.evidence(policy=DEFAULT_POLICY | (1 << 19)))
    ark = tmp_path / "ark.pem"
    ark.write_bytes(sim_snp.pki.root_cert.public_bytes(Encoding.PEM))
    r = CliRunner().invoke(
        app,
        ["policy", "test", "--policy", str(policy), "--report", str(evidence), "--at", AT.isoformat()]
        + ["--trust-root", str(ark), "--client-permissions", "nginx,USA", "--json"]
        + ["--data-dir", str(tmp_path / "none")],
    )
    assert r.exit_code == 1, r.output
    assert json.loads(r.output) == _json("decision-secl-snp")
    # the default guest is the one the example pins
    assert _json("secl-snp")["snp"]["attributes"]["measurement"] == [DEFAULT_MEASUREMENT.hex()]
