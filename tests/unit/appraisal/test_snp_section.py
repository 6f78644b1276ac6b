"""The ``snp`` section of a transfer policy, on simulated SEV-SNP reports verified as the server does:
each clause allows and denies with its reason; debug and migration agents denied by default; the
Rego input carries the same claims."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from tests.helpers.sim_evidence import SimSnpEvidence

from keybroker.appraisal import rego, secl
from keybroker.appraisal.decision import Decision
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.tee.sim.snp import DEFAULT_MEASUREMENT, DEFAULT_POLICY, DEFAULT_TCB
from keybroker.tee.snp.abi import Tcb
from keybroker.tee.verifier import VerifiedEvidence

MEASUREMENT = DEFAULT_MEASUREMENT.hex()
_DEBUG = 1 << 19
_MIGRATE_MA = 1 << 18
_SINGLE_SOCKET = 1 << 20


def _policy(attributes: dict[str, Any] | None = None, **top: Any) -> TransferPolicyBody:
    attrs = {"measurement": [MEASUREMENT], **(attributes or {})}
    return TransferPolicyBody.model_validate(
        {"attestation_type": ["SNP"], "snp": {"attributes": attrs}, "allow_simulated": True, **top}
    )


def _decide(policy: TransferPolicyBody, verified: VerifiedEvidence) -> Decision:
    return secl.evaluate(policy, verified, client_permissions=None, policy_id="p")


def test_a_matching_guest_is_allowed(sim_snp: SimSnpEvidence) -> None:
    verified = sim_snp.verify()
    decision = _decide(_policy(), verified)
    assert decision.allowed, decision.reasons
    # AMD publishes no TCB status: never affirming, said in a note
    assert decision.ear_status == "warning"
    assert (
        "TCB status NoVendorStatus: AMD publishes no TCB status; snp.attributes.minimum_tcb sets the minimum SPLs"
        in decision.notes
    )
    assert "simulated evidence allowed (allow_simulated is true)" in decision.notes


def test_simulated_evidence_is_denied_unless_allowed(sim_snp: SimSnpEvidence) -> None:
    policy = _policy(allow_simulated=False)
    assert _decide(policy, sim_snp.verify()).reasons == (
        "the evidence is simulated (it chains to the dev PKI, not to AMD) and the policy does not set allow_simulated",
    )


def test_debug_guests_are_denied_by_default(sim_snp: SimSnpEvidence) -> None:
    debug = sim_snp.verify(policy=DEFAULT_POLICY | _DEBUG)
    assert debug.claims["debug"] is True
    assert _decide(_policy(), debug).reasons == (
        "debug guest (POLICY.DEBUG is set) and the policy does not set allow_debug",
    )
    allowed = _decide(_policy(allow_debug=True), debug)
    assert allowed.allowed and "debug guest allowed (allow_debug is true)" in allowed.notes


def test_migration_agents_are_forbidden_unless_the_section_allows_them(sim_snp: SimSnpEvidence) -> None:
    ma = sim_snp.verify(policy=DEFAULT_POLICY | _MIGRATE_MA)
    decision = _decide(_policy(), ma)
    assert decision.reasons == (
        "guest POLICY.MIGRATE_MA is set and the policy forbids it (snp.attributes.guest_policy.migrate_ma is false)",
    )
    assert decision.public_reasons == ("guest POLICY.MIGRATE_MA is set, which the policy does not allow",)
    assert _decide(_policy({"guest_policy": {"migrate_ma": None}}), ma).allowed


def test_required_and_forbidden_policy_bits(sim_snp: SimSnpEvidence) -> None:
    smt = sim_snp.verify()  # the simulator's default POLICY allows SMT
    assert _decide(_policy({"guest_policy": {"smt": False, "single_socket": True}}), smt).reasons == (
        "guest POLICY.SMT is set and the policy forbids it (snp.attributes.guest_policy.smt is false)",
        "guest POLICY.SINGLE_SOCKET is clear and the policy requires it set "
        "(snp.attributes.guest_policy.single_socket is true)",
    )
    single = sim_snp.verify(policy=DEFAULT_POLICY | _SINGLE_SOCKET)
    assert _decide(_policy({"guest_policy": {"single_socket": True}}), single).allowed


@pytest.mark.parametrize(
    ("attributes", "fields", "reason"),
    [
        (
            {"measurement": ["ab" * 48]},
            {},
            f"measurement {MEASUREMENT} is not in the policy's list (1 value: {'ab' * 48})",
        ),
        (
            {"host_data": ["cd" * 32]},
            {"host_data": b"\x01" * 32},
            f"host_data {'01' * 32} is not in the policy's list (1 value: {'cd' * 32})",
        ),
        (
            {"id_key_digest": ["ef" * 48]},
            {},
            f"id_key_digest {'00' * 48} is not in the policy's list (1 value: {'ef' * 48})",
        ),
        (
            {"author_key_digest": ["ef" * 48]},
            {},
            f"author_key_digest {'00' * 48} is not in the policy's list (1 value: {'ef' * 48})",
        ),
        (
            {"family_id": ["11" * 16]},
            {"family_id": b"\x22" * 16},
            f"family_id {'22' * 16} is not in the policy's list (1 value: {'11' * 16})",
        ),
        (
            {"image_id": ["11" * 16]},
            {},
            f"image_id {'00' * 16} is not in the policy's list (1 value: {'11' * 16})",
        ),
        ({"guest_svn": 5}, {"guest_svn": 4}, "guest_svn 4 is below the policy minimum 5"),
        ({}, {"vmpl": 1}, "vmpl 1 is not in the policy's list (1 value: 0)"),
        (
            {"minimum_tcb": {"bootloader": 11, "microcode": 85, "snp": 23}},
            {},
            "boot loader SPL 10 in REPORTED_TCB is below the policy minimum 11",
        ),
    ],
)
def test_each_clause_denies_with_its_reason(
    sim_snp: SimSnpEvidence, attributes: dict[str, Any], fields: dict[str, Any], reason: str
) -> None:
    verified = sim_snp.verify(**fields)
    decision = _decide(_policy(attributes), verified)
    assert not decision.allowed
    assert reason in decision.reasons, decision.reasons
    # the public form never carries the policy's expected values
    assert all(
        "(1 value:" not in r and not r.endswith(("minimum 5", "minimum 11")) for r in decision.public_reasons
    )


def test_every_tcb_component_and_the_vmpl_list(sim_snp: SimSnpEvidence) -> None:
    tcb = DEFAULT_TCB["Genoa"]  # bootloader 10, tee 0, snp 23, microcode 84
    verified = sim_snp.verify(vmpl=2)
    policy = _policy(
        {"vmpl": [0, 2], "minimum_tcb": {"bootloader": 10, "tee": 1, "snp": 24, "microcode": 85, "fmc": 3}}
    )
    decision = _decide(policy, verified)
    assert decision.reasons == (
        "TEE SPL 0 in REPORTED_TCB is below the policy minimum 1",
        "SNP firmware SPL 23 in REPORTED_TCB is below the policy minimum 24",
        "microcode SPL 84 in REPORTED_TCB is below the policy minimum 85",
    )
    assert "minimum_tcb.fmc not checked: the Genoa TCB has no FMC SPL" in decision.notes
    # the public form says which component failed, not the minimum
    assert "SNP firmware SPL 23 in REPORTED_TCB is below the policy minimum" in decision.public_reasons
    newer = sim_snp.verify(reported_tcb=Tcb(bootloader=10, tee=1, snp=24, microcode=85))
    assert _decide(_policy({"minimum_tcb": {"tee": 1, "snp": 24, "microcode": 85}}), newer).allowed
    assert tcb.snp == 23


def test_the_section_validates(sim_snp: SimSnpEvidence) -> None:
    with pytest.raises(ValidationError, match="must name the guest it trusts"):
        _policy({"measurement": []})
    with pytest.raises(ValidationError, match="distinct VMPLs 0-3"):
        _policy({"vmpl": [4]})
    with pytest.raises(ValidationError, match="96 hex characters"):
        _policy({"measurement": ["ab" * 32]})
    with pytest.raises(ValidationError, match="extra"):
        _policy({"enforce_tcb_upto_date": True})  # AMD publishes no TCB status: not offered
    with pytest.raises(ValidationError, match="less than or equal to 255"):
        _policy({"minimum_tcb": {"snp": 256}})
    with pytest.raises(ValidationError, match="no snp section"):
        TransferPolicyBody.model_validate({"attestation_type": ["SNP"]})
    id_only = _policy({"measurement": [], "id_key_digest": ["00" * 48]})
    assert _decide(id_only, sim_snp.verify()).allowed


def test_sgx_evidence_under_an_snp_policy_is_denied_by_type(sim_snp: SimSnpEvidence) -> None:
    policy = TransferPolicyBody.model_validate(
        {
            "attestation_type": ["SGX"],
            "sgx": {"attributes": {"mrsigner": ["00" * 32], "isvprodid": [0]}},
            "allow_simulated": True,
        }
    )
    assert _decide(policy, sim_snp.verify()).reasons == (
        "the evidence is SNP but the policy's attestation_type is [SGX]",
    )


def test_the_rego_input_has_the_same_claims(sim_snp: SimSnpEvidence) -> None:
    verified = sim_snp.verify(host_data=b"\x07" * 32, policy=DEFAULT_POLICY | _DEBUG)
    doc = dict(appraisal_input(verified, client_permissions=None))
    assert doc["tee"] == "snp" and doc["sim"] is True
    claims = doc["claims"]
    assert claims["measurement"] == MEASUREMENT and claims["host_data"] == "07" * 32
    assert claims["policy"]["debug"] is True and claims["tcb"]["reported"]["snp"] == 23
    module = """
package keybroker
import rego.v1
default allow := false
allow if {
    input.tee == "snp"
    input.claims.measurement == "MEASUREMENT"
    input.claims.tcb.reported.snp >= 23
    not input.claims.policy.migrate_ma
    input.claims.vmpl == 0
}
reasons contains "debug guest" if input.claims.debug
""".replace("MEASUREMENT", MEASUREMENT)
    compiled = rego.compile_policy(module, policy_id="snp.rego")
    assert rego.evaluate(compiled, doc).reasons[0] == "debug guest"
    clean = dict(appraisal_input(sim_snp.verify(), client_permissions=None))
    decision = rego.evaluate(compiled, clean)
    assert decision.allowed and decision.reasons == ()
