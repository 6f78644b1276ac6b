"""Decisions: deny by default, EAR status and the AR4SI trustworthiness vector derivation."""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers.sim_evidence import SimEvidence

from keybroker.appraisal.decision import TrustVector, decide, tier
from keybroker.appraisal.defaults import default_attestation_policy, default_resource_policy
from keybroker.appraisal.input import appraisal_input


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-1, "none"), (0, "none"), (1, "none"), (2, "affirming"), (31, "affirming"), (32, "warning"), (95, "warning"),
     (96, "contraindicated"), (127, "contraindicated")],
)  # fmt: skip
def test_ar4si_tiers(value: int, expected: str) -> None:
    assert tier(value) == expected


def _doc(sim: SimEvidence, tee: str = "sgx", *, simulated: bool = False, **quote: Any) -> dict[str, Any]:
    doc = dict(appraisal_input(sim.verify(tee, **quote), client_permissions=None))  # type: ignore[arg-type]
    doc["sim"] = simulated
    return doc


def test_allowed_with_reasons_is_denied(sim: SimEvidence) -> None:
    d = decide(_doc(sim), allowed=True, reasons=["x"], policy_id="p", executables="approved")
    assert not d.allowed and d.reasons == ("x",) and d.ear_status == "contraindicated"
    assert d.trust_vector.executables == 0  # a denial never claims approved executables


def test_denied_without_reason_gets_one(sim: SimEvidence) -> None:
    d = decide(_doc(sim), allowed=False, reasons=[], policy_id="p", executables="unchecked")
    assert d.reasons == ("the policy did not allow the request",)


def test_no_document_never_allows() -> None:
    d = decide(None, allowed=True, reasons=[], policy_id="p", executables="approved")
    assert not d.allowed and d.trust_vector == TrustVector()


@pytest.mark.parametrize(
    ("quote", "simulated", "allowed", "status", "vector"),
    [
        ({}, False, True, "affirming", (2, 2, 2, 2, 2)),
        ({}, True, True, "warning", (0, 2, 2, 32, 2)),
        ({"tcb": "swhardening"}, False, True, "warning", (2, 2, 2, 32, 2)),
        ({"debug": True}, False, True, "warning", (2, 32, 2, 2, 32)),
        ({"debug": True}, False, False, "contraindicated", (2, 96, 0, 2, 96)),
        ({}, False, False, "contraindicated", (2, 2, 0, 2, 2)),
    ],
)
@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_vector_table(
    sim: SimEvidence,
    tee: str,
    quote: dict[str, Any],
    simulated: bool,
    allowed: bool,
    status: str,
    vector: tuple[int, ...],
) -> None:
    d = decide(
        _doc(sim, tee, simulated=simulated, **quote),
        allowed=allowed,
        reasons=[] if allowed else ["no"],
        policy_id="p",
        executables="approved",
    )
    assert d.ear_status == status
    v = d.trust_vector
    assert (v.instance_identity, v.configuration, v.executables, v.hardware, v.runtime_opaque) == vector
    assert (v.file_system, v.storage_opaque, v.sourced_data) == (0, 0, 0)


def test_configuration_needed_is_a_configuration_warning(sim: SimEvidence) -> None:
    doc = _doc(sim)
    doc["tcb"]["status"] = "ConfigurationAndSWHardeningNeeded"
    d = decide(doc, allowed=True, reasons=[], policy_id="p", executables="approved")
    assert (d.trust_vector.configuration, d.trust_vector.hardware, d.ear_status) == (32, 32, "warning")


def test_decision_to_dict(sim: SimEvidence) -> None:
    d = decide(_doc(sim), allowed=True, reasons=[], notes=["n"], policy_id="p", executables="approved")
    assert d.to_dict() == {
        "allowed": True,
        "reasons": [],
        "notes": ["n"],
        "policy_id": "p",
        "ear_status": "affirming",
        "trust_vector": d.trust_vector.to_dict(),
    }


# --- built-in policies ---------------------------------------------------------------------------


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_default_resource_policy_allows_only_affirming_real_evidence(sim: SimEvidence, tee: str) -> None:
    d = default_resource_policy(_doc(sim, tee), ear_status="affirming")
    assert d.allowed and d.ear_status == "affirming"
    assert d.policy_id == "keybroker:default-resource-policy"


@pytest.mark.parametrize(
    ("quote", "simulated", "ear_status", "reasons"),
    [
        ({}, True, None, ["the evidence is simulated (it chains to the dev PKI, not to Intel)"]),
        ({"tcb": "outofdate"}, False, None, ["TCB status OutOfDate is not UpToDate; advisories DEV-SA-00001, DEV-SA-00002"]),
        ({"debug": True}, False, None, ["debug enclave (or its debug flag is missing)"]),
        ({}, False, "warning", ["ear.status is warning, not affirming"]),
    ],
)  # fmt: skip
def test_default_resource_policy_denials(
    sim: SimEvidence, quote: dict[str, Any], simulated: bool, ear_status: str | None, reasons: list[str]
) -> None:
    d = default_resource_policy(_doc(sim, simulated=simulated, **quote), ear_status=ear_status)
    assert not d.allowed
    assert list(d.reasons) == reasons


def test_default_attestation_policy(sim: SimEvidence) -> None:
    clean = default_attestation_policy(_doc(sim))
    assert clean.allowed and clean.ear_status == "affirming" and clean.notes == ()

    simulated = default_attestation_policy(_doc(sim, simulated=True, tcb="swhardening"))
    assert simulated.allowed and simulated.ear_status == "warning"
    assert simulated.notes == (
        "TCB status SWHardeningNeeded; advisories DEV-SA-00001",
        "simulated evidence (it chains to the dev PKI, not to Intel)",
    )

    debug = default_attestation_policy(_doc(sim, "tdx", debug=True))
    assert not debug.allowed and debug.ear_status == "contraindicated"
    assert debug.reasons == ("debug TD (or its debug flag is missing)",)


#: A TD attribute bit no TDX module defines (bit 40 of the OTHER range).
RESERVED_BIT = 1 << 40


def test_reserved_td_attribute_bits_are_a_claim_the_default_policies_deny(sim: SimEvidence) -> None:
    clean = _doc(sim, "tdx")
    assert clean["claims"]["td_attributes"]["reserved"] == "0000000000000000"
    assert default_attestation_policy(clean).allowed and default_resource_policy(clean).allowed

    doc = _doc(sim, "tdx", extra_td_attributes=RESERVED_BIT)
    assert doc["claims"]["td_attributes"]["reserved"] == f"{RESERVED_BIT:016x}"
    reason = f"reserved TD attribute bits {RESERVED_BIT:016x} are set (TD_ATTRIBUTES {RESERVED_BIT | 1 << 28:016x})"
    attested = default_attestation_policy(doc)
    assert not attested.allowed and attested.ear_status == "contraindicated"
    assert attested.reasons == (reason,)
    assert default_resource_policy(doc).reasons == (reason,)
    # a defined bit (PERFMON, 63) is a decoded claim, not a reserved one
    perfmon = _doc(sim, "tdx", extra_td_attributes=1 << 63)
    assert perfmon["claims"]["td_attributes"]["perfmon"] is True
    assert default_attestation_policy(perfmon).allowed


def test_missing_reserved_td_attributes_claim_denies(sim: SimEvidence) -> None:
    doc = _doc(sim, "tdx")
    del doc["claims"]["td_attributes"]["reserved"]
    for decision in (default_attestation_policy(doc), default_resource_policy(doc)):
        assert not decision.allowed
        assert (
            "the TD's reserved TD attribute bits (claims.td_attributes.reserved) are missing"
            in decision.reasons
        )
