"""The ``tpm`` policy section on TPM claims: PCR allowlists, event-log clauses, AK constraints and the
clock (denied by default when it went back, by the transfer policy and the default policies alike),
each failure one reason naming the clause; and the section's model refusing policies that would
silently deny or never match."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from keybroker.appraisal import secl
from keybroker.appraisal.defaults import default_attestation_policy, default_resource_policy
from keybroker.appraisal.policy import TransferPolicyBody

PCR7 = "aa" * 32
CLAIMS: dict[str, Any] = {
    "tee": "tpm",
    "debug": False,
    "ak": {"name": "000b" + "11" * 32, "trust": {"mode": "enrolled", "vendor": None, "enrolment": {}}},
    "quote": {"clock": 5000, "reset_count": 3, "restart_count": 0},
    "pcrs": {"sha256": {"7": PCR7, "8": "bb" * 32}},
    "event_log": {
        "secure_boot": {"enabled": True, "pk": "01" * 32, "kek": None, "db": "02" * 32, "dbx": "03" * 32},
        "boot_applications": ["04" * 32, "05" * 32],
        "kernel_cmdline": "/vmlinuz ro",
        "kernel": None,
        "initrd": None,
    },
    "clock_history": {
        "known": True,
        "previous": {"clock": 4000, "reset_count": 3, "restart_count": 0},
        "reset_count_decreased": False,
        "restart_count_decreased": False,
        "clock_decreased": False,
    },
}


def _doc(claims: dict[str, Any] | None = None, *, sim: bool = False) -> dict[str, Any]:
    return {
        "tee": "tpm",
        "claims": copy.deepcopy(claims or CLAIMS),
        "tcb": {"status": "NoVendorStatus", "advisory_ids": []},
        "sim": sim,
        "client_permissions": None,
    }


def _policy(**attributes: Any) -> TransferPolicyBody:
    return TransferPolicyBody.model_validate({"attestation_type": ["TPM"], "tpm": {"attributes": attributes}})


def _reasons(policy: TransferPolicyBody, doc: dict[str, Any]) -> list[str]:
    d = secl.evaluate_input(policy, doc, policy_id="p")
    assert d.allowed == (not d.reasons)
    return list(d.reasons)


def test_pcrs_and_event_log_clauses() -> None:
    ok = _policy(
        pcrs={"sha256": {"7": [PCR7.upper(), "cc" * 32]}},
        event_log={
            "secure_boot": True,
            "db": ["02" * 32],
            "boot_applications": ["04" * 32, "05" * 32, "06" * 32],
            "kernel_cmdline": ["/vmlinuz ro"],
        },
    )
    assert _reasons(ok, _doc()) == []
    bad = _policy(
        pcrs={"sha256": {"7": ["cc" * 32], "9": ["dd" * 32]}, "sha1": {"0": ["ee" * 20]}},
        event_log={
            "secure_boot": False,
            "kek": ["07" * 32],
            "boot_applications": ["04" * 32],
            "kernel": ["08" * 32],
        },
    )
    assert _reasons(bad, _doc()) == [
        f"pcrs.sha256.7 {PCR7} is not in the policy's list (1 value: {'cc' * 32})",
        "pcrs.sha256.9: the claim is missing from the evidence",
        "pcrs.sha1.0: the claim is missing from the evidence",
        "Secure Boot was on; the policy requires it off",
        "kek: the claim is missing from the evidence",
        f"boot_applications {'05' * 32} is not in the policy's list (1 value: {'04' * 32})",
        "kernel: the claim is missing from the evidence",
        "the files measured into PCR 9 are not known from the event log",
    ]
    no_log = copy.deepcopy(CLAIMS)
    del no_log["event_log"]
    assert _reasons(_policy(event_log={}), _doc(no_log)) == [
        "the policy requires an event log, and the evidence carries none"
    ]


def test_kernel_and_initrd_need_every_pcr9_file_listed() -> None:
    """PCR 9's paths are not measured and the OS can extend PCR 9: the kernel claim (the file whose
    path the command line names) holds only when no other file could have been the one booted."""
    claims = copy.deepcopy(CLAIMS)
    kernel, initrd, cfg, other = "08" * 32, "09" * 32, "0a" * 32, "0b" * 32
    files = [{"digest": d, "path": None} for d in (cfg, kernel, initrd)]
    claims["event_log"].update(kernel=kernel, initrd=initrd, ipl_files=files)
    listed = {"kernel": [kernel], "initrd": [initrd], "ipl_files": [cfg]}
    assert _reasons(_policy(event_log=listed), _doc(claims)) == []
    claims["event_log"]["ipl_files"].append({"digest": other, "path": "/vmlinuz"})
    assert _reasons(_policy(event_log=listed), _doc(claims)) == [
        f"ipl_files {other} is not in the policy's list (3 values: {kernel}, {initrd}, {cfg})"
    ]
    # ipl_files alone: an allowlist of every PCR 9 file
    assert _reasons(_policy(event_log={"ipl_files": [cfg, kernel, initrd]}), _doc(claims)) == [
        f"ipl_files {other} is not in the policy's list (3 values: {cfg}, {kernel}, {initrd})"
    ]


def test_ak_clauses() -> None:
    assert _reasons(_policy(ak_trust=["certificate"]), _doc()) == [
        "the AK is trusted by enrolled, which the policy's ak_trust [certificate] does not list"
    ]
    certified = copy.deepcopy(CLAIMS)
    certified["ak"]["trust"] = {"mode": "certificate", "vendor": "gce", "enrolment": None}
    assert _reasons(_policy(ak_vendors=["gce"]), _doc(certified)) == []
    assert _reasons(_policy(ak_vendors=["azure"]), _doc(certified)) == [
        "ak_vendors 'gce' is not in the policy's list (1 value: 'azure')"
    ]
    assert _reasons(_policy(ak_names=["000b" + "22" * 32]), _doc())[0].startswith("ak_names 000b1111")
    given = copy.deepcopy(CLAIMS)
    given["ak"]["trust"]["mode"] = "given"
    assert "given" in _reasons(_policy(), _doc(given))[0]  # the CLI's own AK is not trusted by default


@pytest.mark.parametrize("went_back", ["reset_count_decreased", "restart_count_decreased", "clock_decreased"])
def test_a_clock_that_went_back_is_denied_unless_allowed(went_back: str) -> None:
    claims = copy.deepcopy(CLAIMS)
    claims["clock_history"][went_back] = True
    (reason,) = _reasons(_policy(), _doc(claims))
    assert "went back since the AK's latest quote" in reason and "allow_clock_regression" in reason
    d = secl.evaluate_input(_policy(allow_clock_regression=True), _doc(claims), policy_id="p")
    assert d.allowed and any("allowed (allow_clock_regression is true)" in n for n in d.notes)
    # the default policies deny it too
    assert not default_attestation_policy(_doc(claims)).allowed
    assert not default_resource_policy(_doc(claims)).allowed
    missing = copy.deepcopy(CLAIMS)
    del missing["clock_history"]
    assert not default_attestation_policy(_doc(missing)).allowed  # a missing history counts against


def test_default_policies_on_a_tpm() -> None:
    d = default_attestation_policy(_doc())
    assert d.allowed and d.ear_status == "warning"  # no vendor TCB status
    assert d.trust_vector.runtime_opaque == 0 and d.trust_vector.hardware == 32
    assert not default_resource_policy(_doc()).allowed  # a TPM's resources need a policy
    assert _reasons(_policy(enforce_tcb_upto_date=True), _doc()) == [
        "TCB status NoVendorStatus is not UpToDate (enforce_tcb_upto_date is true)"
    ]


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"pcrs": {"sha256": {"7": []}}}, "empty allowlist would deny every quote"),
        ({"pcrs": {"sha256": {"7": ["aa" * 20]}}}, "is not a sha256 value"),
        ({"pcrs": {"sha256": {}}}, "lists no PCR"),
        ({"pcrs": {"md5": {"7": ["aa" * 16]}}}, "md5"),
        ({"pcrs": {"sha256": {"32": [PCR7]}}}, "32"),
        ({"ak_trust": []}, "ak_trust"),
        ({"ak_names": ["zz"]}, "TPM Name"),
        ({"event_log": {"db": ["abc"]}}, "digest"),
        ({"pcr": {}}, "pcr"),
    ],
)
def test_the_model_refuses(attributes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _policy(**attributes)
