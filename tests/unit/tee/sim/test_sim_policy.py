"""The simulator's default policy: SecL the API's model accepts, one per TEE, nothing for others."""

from __future__ import annotations

import pytest

from keybroker.tee import sim


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_policy_names_its_tee_and_allows_simulation(tee: str) -> None:
    policy = sim.sim_policy(tee)
    assert policy["attestation_type"] == [tee.upper()]
    assert policy["allow_simulated"] is True
    assert policy[tee]["attributes"]["enforce_tcb_upto_date"] is True
    assert "enforce_tcb_upto_date" not in sim.sim_policy(tee, enforce_tcb_upto_date=None)[tee]["attributes"]


def test_each_call_is_a_fresh_body() -> None:
    first = sim.sim_policy("sgx")
    first["sgx"]["attributes"]["isvsvn"] = 99
    assert sim.sim_policy("sgx")["sgx"]["attributes"]["isvsvn"] == sim.SIM_ISVSVN


def test_unknown_tee_is_refused() -> None:
    with pytest.raises(ValueError, match="'snp'"):
        sim.sim_policy("snp")
