"""SecL v5 transfer policies on real simulator quotes: every clause, exact reason texts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tests.helpers.sim_evidence import SimEvidence

from keybroker.appraisal import secl
from keybroker.appraisal.decision import Decision
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.errors import VerificationError
from keybroker.tee.sim import (
    DEFAULT_MRENCLAVE,
    DEFAULT_MRSEAM,
    DEFAULT_MRSIGNER,
    DEFAULT_MRSIGNERSEAM,
    DEFAULT_MRTD,
    DEFAULT_RTMRS,
    DEFAULT_SEAMSVN,
)

OTHER32 = "ab" * 32
OTHER48 = "cd" * 48
SIM_NOTE = "simulated evidence allowed (allow_simulated is true)"


def sgx_policy(**attributes: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "mrsigner": [DEFAULT_MRSIGNER.hex()],
        "isvprodid": [0],
        "mrenclave": [DEFAULT_MRENCLAVE.hex()],
        "isvsvn": 0,
    }
    attrs.update(attributes)
    return {"attestation_type": ["SGX"], "sgx": {"attributes": attrs}, "allow_simulated": True}


def tdx_policy(**attributes: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "mrsignerseam": [DEFAULT_MRSIGNERSEAM.hex()],
        "mrseam": [DEFAULT_MRSEAM.hex()],
        "seamsvn": DEFAULT_SEAMSVN,
        "mrtd": [DEFAULT_MRTD.hex()],
        **{f"rtmr{i}": DEFAULT_RTMRS[i].hex() for i in range(4)},
    }
    attrs.update(attributes)
    return {"attestation_type": ["TDX"], "tdx": {"attributes": attrs}, "allow_simulated": True}


def evaluate(
    sim: SimEvidence,
    policy: dict[str, Any],
    tee: str,
    *,
    client_permissions: list[str] | None = None,
    **quote: Any,
) -> Decision:
    verified = sim.verify(tee, **quote)  # type: ignore[arg-type]
    return secl.evaluate(
        TransferPolicyBody.model_validate(policy),
        verified,
        client_permissions=client_permissions,
        policy_id="p-1",
    )


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_matching_policy_allows_with_sim_note(sim: SimEvidence, tee: str) -> None:
    policy = sgx_policy() if tee == "sgx" else tdx_policy()
    d = evaluate(sim, policy, tee)
    assert d.allowed, d.reasons
    assert d.reasons == ()
    assert d.notes == (SIM_NOTE,)
    assert d.policy_id == "p-1"
    assert d.ear_status == "warning"  # simulated evidence is never affirming


SGX_MISMATCHES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "mrsigner",
        {"mrsigner": [OTHER32]},
        {},
        f"mrsigner {DEFAULT_MRSIGNER.hex()} is not in the policy's list (1 value: {OTHER32})",
    ),
    (
        "mrsigner-quote",
        {},
        {"mrsigner": bytes.fromhex(OTHER32)},
        f"mrsigner {OTHER32} is not in the policy's list (1 value: {DEFAULT_MRSIGNER.hex()})",
    ),
    ("isvprodid", {"isvprodid": [7, 9]}, {}, "isvprodid 0 is not in the policy's list (2 values: 7, 9)"),
    (
        "mrenclave",
        {"mrenclave": [OTHER32, "ef" * 32]},
        {},
        f"mrenclave {DEFAULT_MRENCLAVE.hex()} is not in the policy's list (2 values: {OTHER32}, {'ef' * 32})",
    ),
    (
        "mrenclave-quote",
        {},
        {"mrenclave": bytes(32)},
        f"mrenclave {'00' * 32} is not in the policy's list (1 value: {DEFAULT_MRENCLAVE.hex()})",
    ),
    ("isvsvn", {"isvsvn": 3}, {"isvsvn": 2}, "isvsvn 2 is below the policy minimum 3"),
    (
        "client_permissions",
        {"client_permissions": ["nginx"]},
        {},
        "the policy requires client permissions [nginx] but the request presented no token",
    ),
    (
        "enforce_tcb_upto_date",
        {"enforce_tcb_upto_date": True},
        {"tcb": "swhardening"},
        "TCB status SWHardeningNeeded is not UpToDate (enforce_tcb_upto_date is true); advisories DEV-SA-00001",
    ),
]

TDX_MISMATCHES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "mrsignerseam",
        {"mrsignerseam": [OTHER48]},
        {},
        f"mrsignerseam {DEFAULT_MRSIGNERSEAM.hex()} is not in the policy's list (1 value: {OTHER48})",
    ),
    (
        "mrseam",
        {"mrseam": [OTHER48]},
        {},
        f"mrseam {DEFAULT_MRSEAM.hex()} is not in the policy's list (1 value: {OTHER48})",
    ),
    (
        "mrseam-quote",
        {},
        {"mrseam": bytes.fromhex(OTHER48)},
        f"mrseam {OTHER48} is not in the policy's list (1 value: {DEFAULT_MRSEAM.hex()})",
    ),
    (
        "seamsvn",
        {"seamsvn": DEFAULT_SEAMSVN + 1},
        {},
        f"seamsvn {DEFAULT_SEAMSVN} is below the policy minimum {DEFAULT_SEAMSVN + 1}",
    ),
    (
        "mrtd",
        {"mrtd": [OTHER48]},
        {},
        f"mrtd {DEFAULT_MRTD.hex()} is not in the policy's list (1 value: {OTHER48})",
    ),
    (
        "mrtd-quote",
        {},
        {"mrtd": bytes(48)},
        f"mrtd {'00' * 48} is not in the policy's list (1 value: {DEFAULT_MRTD.hex()})",
    ),
    *[
        (
            f"rtmr{i}",
            {f"rtmr{i}": OTHER48},
            {},
            f"rtmr{i} {DEFAULT_RTMRS[i].hex()} differs from the policy's {OTHER48}",
        )
        for i in range(4)
    ],
    (
        "rtmr2-quote",
        {},
        {"rtmr2": bytes(48)},
        f"rtmr2 {'00' * 48} differs from the policy's {DEFAULT_RTMRS[2].hex()}",
    ),
    (
        "client_permissions",
        {"client_permissions": ["nginx"]},
        {},
        "the policy requires client permissions [nginx] but the request presented no token",
    ),
    (
        "enforce_tcb_upto_date",
        {"enforce_tcb_upto_date": True},
        {"tcb": "outofdate"},
        "TCB status OutOfDate is not UpToDate (enforce_tcb_upto_date is true); "
        "advisories DEV-SA-00101, DEV-SA-00102",
    ),
]


@pytest.mark.parametrize(
    ("attrs", "quote", "reason"), [m[1:] for m in SGX_MISMATCHES], ids=[m[0] for m in SGX_MISMATCHES]
)
def test_sgx_single_clause_mismatch(
    sim: SimEvidence, attrs: dict[str, Any], quote: dict[str, Any], reason: str
) -> None:
    d = evaluate(sim, sgx_policy(**attrs), "sgx", **quote)
    assert not d.allowed
    assert d.reasons == (reason,)
    assert d.ear_status == "contraindicated"


@pytest.mark.parametrize(
    ("attrs", "quote", "reason"), [m[1:] for m in TDX_MISMATCHES], ids=[m[0] for m in TDX_MISMATCHES]
)
def test_tdx_single_clause_mismatch(
    sim: SimEvidence, attrs: dict[str, Any], quote: dict[str, Any], reason: str
) -> None:
    d = evaluate(sim, tdx_policy(**attrs), "tdx", **quote)
    assert not d.allowed
    assert d.reasons == (reason,)
    assert d.ear_status == "contraindicated"


@pytest.mark.parametrize(("svn", "allowed"), [(3, True), (4, True), (2, False)])
def test_isvsvn_is_a_minimum(sim: SimEvidence, svn: int, allowed: bool) -> None:
    d = evaluate(sim, sgx_policy(isvsvn=3), "sgx", isvsvn=svn)
    assert d.allowed is allowed
    assert d.reasons == (() if allowed else (f"isvsvn {svn} is below the policy minimum 3",))


@pytest.mark.parametrize(("delta", "allowed"), [(0, True), (1, True), (-1, False)])
def test_seamsvn_is_a_minimum(sim: SimEvidence, delta: int, allowed: bool) -> None:
    minimum = DEFAULT_SEAMSVN
    d = evaluate(sim, tdx_policy(seamsvn=minimum), "tdx", seamsvn=minimum + delta)
    assert d.allowed is allowed
    if not allowed:
        assert d.reasons == (f"seamsvn {minimum + delta} is below the policy minimum {minimum}",)


def test_empty_mrenclave_and_mrtd_lists_are_not_checked(sim: SimEvidence) -> None:
    assert evaluate(sim, sgx_policy(mrenclave=[]), "sgx", mrenclave=bytes(32)).allowed
    assert evaluate(sim, tdx_policy(mrtd=[]), "tdx", mrtd=bytes(48)).allowed


def test_unset_svn_minimums_and_rtmrs_are_not_checked(sim: SimEvidence) -> None:
    policy = tdx_policy(seamsvn=None, rtmr0=None, rtmr1=None, rtmr2=None, rtmr3=None)
    assert evaluate(sim, policy, "tdx", rtmr0=bytes(48), rtmr3=bytes(48)).allowed
    assert evaluate(sim, sgx_policy(isvsvn=None), "sgx", isvsvn=0).allowed


@pytest.mark.parametrize(
    ("tee", "reason"),
    [
        ("sgx", "debug enclave (ATTRIBUTES.DEBUG is set) and the policy does not set allow_debug"),
        ("tdx", "debug TD (TD_ATTRIBUTES.DEBUG is set) and the policy does not set allow_debug"),
    ],
)
def test_debug_denied_unless_allow_debug(sim: SimEvidence, tee: str, reason: str) -> None:
    policy = sgx_policy() if tee == "sgx" else tdx_policy()
    denied = evaluate(sim, policy, tee, debug=True)
    assert not denied.allowed
    assert denied.reasons == (reason,)
    assert denied.trust_vector.configuration == 96
    assert denied.trust_vector.runtime_opaque == 96

    allowed = evaluate(sim, {**policy, "allow_debug": True}, tee, debug=True)
    assert allowed.allowed
    what = "enclave" if tee == "sgx" else "TD"
    assert allowed.notes == (SIM_NOTE, f"debug {what} allowed (allow_debug is true)")
    assert allowed.ear_status == "warning"
    assert allowed.trust_vector.configuration == 32


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_sim_denied_unless_allow_simulated(sim: SimEvidence, tee: str) -> None:
    policy = sgx_policy() if tee == "sgx" else tdx_policy()
    d = evaluate(sim, {**policy, "allow_simulated": False}, tee)
    assert not d.allowed
    assert d.reasons == (
        "the evidence is simulated (it chains to the dev PKI, not to Intel) "
        "and the policy does not set allow_simulated",
    )


@pytest.mark.parametrize(
    ("presented", "reasons"),
    [
        (None, ("the policy requires client permissions [nginx, USA] but the request presented no token",)),
        (
            [],
            (
                "client permission nginx is not in the caller's token",
                "client permission USA is not in the caller's token",
            ),
        ),
        (["nginx"], ("client permission USA is not in the caller's token",)),
        (["USA", "nginx"], ()),
        (["nginx", "USA", "other"], ()),
    ],
)
@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_client_permissions(
    sim: SimEvidence, tee: str, presented: list[str] | None, reasons: tuple[str, ...]
) -> None:
    make = sgx_policy if tee == "sgx" else tdx_policy
    d = evaluate(sim, make(client_permissions=["nginx", "USA"]), tee, client_permissions=presented)
    assert d.reasons == reasons
    assert d.allowed is (reasons == ())


def test_no_client_permissions_in_policy_allows_without_token(sim: SimEvidence) -> None:
    assert evaluate(sim, sgx_policy(), "sgx", client_permissions=None).allowed


ADVISORIES = {
    ("sgx", "swhardening"): ("SWHardeningNeeded", "DEV-SA-00001"),
    ("sgx", "outofdate"): ("OutOfDate", "DEV-SA-00001, DEV-SA-00002"),
    ("tdx", "swhardening"): ("SWHardeningNeeded", "DEV-SA-00101"),
    ("tdx", "outofdate"): ("OutOfDate", "DEV-SA-00101, DEV-SA-00102"),
}


@pytest.mark.parametrize(("tee", "tcb"), list(ADVISORIES))
def test_enforce_tcb_upto_date(sim: SimEvidence, tee: str, tcb: str) -> None:
    status, advisories = ADVISORIES[(tee, tcb)]
    make = sgx_policy if tee == "sgx" else tdx_policy

    enforced = evaluate(sim, make(enforce_tcb_upto_date=True), tee, tcb=tcb)
    assert not enforced.allowed
    assert enforced.reasons == (
        f"TCB status {status} is not UpToDate (enforce_tcb_upto_date is true); advisories {advisories}",
    )

    relaxed = evaluate(sim, make(enforce_tcb_upto_date=False), tee, tcb=tcb)
    assert relaxed.allowed
    assert relaxed.notes == (
        SIM_NOTE,
        f"TCB status {status} allowed (enforce_tcb_upto_date is false); advisories {advisories}",
    )
    assert relaxed.ear_status == "warning"
    assert relaxed.trust_vector.hardware == 32


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_uptodate_passes_enforcement_without_notes(sim: SimEvidence, tee: str) -> None:
    make = sgx_policy if tee == "sgx" else tdx_policy
    d = evaluate(sim, make(enforce_tcb_upto_date=True), tee, tcb="uptodate")
    assert d.allowed
    assert d.notes == (SIM_NOTE,)


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_revoked_tcb_does_not_verify(sim: SimEvidence, tee: str) -> None:
    with pytest.raises(VerificationError) as info:
        sim.verify(tee, tcb="revoked")  # type: ignore[arg-type]
    assert info.value.check == "tcb_status"


def test_all_failures_are_collected_in_order(sim: SimEvidence) -> None:
    policy = sgx_policy(
        mrsigner=[OTHER32],
        isvprodid=[5],
        mrenclave=[OTHER32],
        isvsvn=9,
        client_permissions=["nginx"],
        enforce_tcb_upto_date=True,
    )
    policy["allow_simulated"] = False
    d = evaluate(sim, policy, "sgx", debug=True, tcb="outofdate", isvsvn=1)
    assert d.reasons == (
        "the evidence is simulated (it chains to the dev PKI, not to Intel) "
        "and the policy does not set allow_simulated",
        "debug enclave (ATTRIBUTES.DEBUG is set) and the policy does not set allow_debug",
        f"mrsigner {DEFAULT_MRSIGNER.hex()} is not in the policy's list (1 value: {OTHER32})",
        "isvprodid 0 is not in the policy's list (1 value: 5)",
        f"mrenclave {DEFAULT_MRENCLAVE.hex()} is not in the policy's list (1 value: {OTHER32})",
        "isvsvn 1 is below the policy minimum 9",
        "the policy requires client permissions [nginx] but the request presented no token",
        "TCB status OutOfDate is not UpToDate (enforce_tcb_upto_date is true); "
        "advisories DEV-SA-00001, DEV-SA-00002",
    )
    assert d.trust_vector.executables == 33


def test_long_lists_are_abbreviated(sim: SimEvidence) -> None:
    values = [f"{i:02x}" * 32 for i in range(6)]
    d = evaluate(sim, sgx_policy(mrenclave=values), "sgx")
    assert d.reasons == (
        f"mrenclave {DEFAULT_MRENCLAVE.hex()} is not in the policy's list "
        f"(6 values: {', '.join(values[:4])}, and 2 more)",
    )


@pytest.mark.parametrize(("tee", "types"), [("tdx", "SGX"), ("sgx", "TDX")])
def test_tee_not_in_attestation_type(sim: SimEvidence, tee: str, types: str) -> None:
    policy = sgx_policy() if types == "SGX" else tdx_policy()
    d = evaluate(sim, policy, tee)
    assert d.reasons == (f"the evidence is {tee.upper()} but the policy's attestation_type is [{types}]",)


def test_policy_with_both_sections_picks_the_evidence_tee(sim: SimEvidence) -> None:
    both = {**sgx_policy(), "attestation_type": ["SGX", "TDX"], "tdx": tdx_policy(mrtd=[OTHER48])["tdx"]}
    assert evaluate(sim, both, "sgx").allowed
    assert evaluate(sim, both, "tdx").reasons == (
        f"mrtd {DEFAULT_MRTD.hex()} is not in the policy's list (1 value: {OTHER48})",
    )


def test_trust_authority_policy_ids_deny(sim: SimEvidence) -> None:
    policy = sgx_policy()
    policy["sgx"]["policy_ids"] = ["3d1a5d3c-1b4a-4c0e-9f0f-8f1d2f3e4a5b"]
    d = evaluate(sim, policy, "sgx")
    assert d.reasons == (
        "the policy's sgx.policy_ids [3d1a5d3c-1b4a-4c0e-9f0f-8f1d2f3e4a5b] name Trust Authority "
        "appraisal policies, which keybroker does not evaluate",
    )


def test_hex_compares_case_insensitively(sim: SimEvidence) -> None:
    doc = appraisal_input(sim.verify("sgx"), client_permissions=None)
    upper = copy.deepcopy(doc)
    upper["claims"]["mr_enclave"] = doc["claims"]["mr_enclave"].upper()
    upper["claims"]["mr_signer"] = doc["claims"]["mr_signer"].upper()
    policy = TransferPolicyBody.model_validate(sgx_policy())
    assert secl.evaluate_input(policy, upper, policy_id="p").allowed


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d["claims"].pop("isv_svn"), "isvsvn: claim isv_svn is missing or not an integer"),
        (lambda d: d["claims"].update(mr_signer="zz"), "mrsigner: claim mr_signer is missing or not hex"),
        (
            lambda d: d["claims"].update(isv_prod_id=True),
            "isvprodid: claim isv_prod_id is missing or not an integer",
        ),
        (lambda d: d.update(tcb=None), "the TCB status is missing from the input document"),
        (
            lambda d: d["claims"].pop("debug"),
            "debug enclave (ATTRIBUTES.DEBUG is set) and the policy does not set allow_debug",
        ),
        (
            lambda d: d.update(tee="sev"),
            "the evidence TEE 'sev' is not SGX, TDX, SNP, TPM, AZ-SNP-VTPM or AZ-TDX-VTPM, or its claims do not "
            "match it",
        ),
        (
            lambda d: d.update(client_permissions="nginx"),
            "client_permissions in the input document are malformed",
        ),
    ],
)
def test_malformed_input_denies(sim: SimEvidence, mutate: Any, reason: str) -> None:
    doc: dict[str, Any] = copy.deepcopy(dict(appraisal_input(sim.verify("sgx"), client_permissions=None)))
    mutate(doc)
    policy = TransferPolicyBody.model_validate(sgx_policy(client_permissions=["nginx"]))
    d = secl.evaluate_input(policy, doc, policy_id="p")
    assert not d.allowed
    assert reason in d.reasons


def test_affirming_only_for_clean_non_simulated_evidence(sim: SimEvidence) -> None:
    doc: dict[str, Any] = dict(appraisal_input(sim.verify("tdx"), client_permissions=None))
    doc["sim"] = False  # as if Intel-rooted: the appraisal only reads the flag
    policy = TransferPolicyBody.model_validate(tdx_policy())
    d = secl.evaluate_input(policy, doc, policy_id="p")
    assert d.allowed and d.notes == ()
    assert d.ear_status == "affirming"
    assert d.trust_vector.to_dict() == {
        "instance-identity": 2,
        "configuration": 2,
        "executables": 2,
        "file-system": 0,
        "hardware": 2,
        "runtime-opaque": 2,
        "storage-opaque": 0,
        "sourced-data": 0,
    }


@pytest.mark.parametrize(
    ("tee", "attrs", "quote"),
    [("sgx", m[1], m[2]) for m in SGX_MISMATCHES] + [("tdx", m[1], m[2]) for m in TDX_MISMATCHES],
    ids=[f"sgx-{m[0]}" for m in SGX_MISMATCHES] + [f"tdx-{m[0]}" for m in TDX_MISMATCHES],
)
def test_public_reasons_never_carry_the_policys_values(
    sim: SimEvidence, tee: str, attrs: dict[str, Any], quote: dict[str, Any]
) -> None:
    """The public form names the clause and the presented value; the policy's expected values are
    only in the full text (what the audit log and entitled callers get)."""
    make = sgx_policy if tee == "sgx" else tdx_policy
    d = evaluate(sim, make(**attrs), tee, **quote)
    assert not d.allowed and d.findings
    for finding in d.findings:
        if finding.presented is not None:
            assert finding.presented in finding.public
        if finding.expected is None:
            assert finding.public == finding.text
            continue
        assert finding.expected in finding.text
        for value in finding.expected.replace(":", ",").split(","):
            value = value.strip()
            if len(value) > 1 and not value.endswith("value") and not value.endswith("values"):
                assert value not in finding.public, (value, finding.public)
    assert d.public_reasons == tuple(dict.fromkeys(f.public for f in d.findings))


def test_public_client_permission_reasons(sim: SimEvidence) -> None:
    policy = sgx_policy(client_permissions=["nginx", "USA"])
    d = evaluate(sim, policy, "sgx", client_permissions=["other"])
    assert d.reasons == (
        "client permission nginx is not in the caller's token",
        "client permission USA is not in the caller's token",
    )
    assert d.public_reasons == (
        "the caller's token (client permissions [other]) lacks one the policy requires",
    )
    d = evaluate(sim, policy, "sgx", client_permissions=None)
    assert d.public_reasons == ("the policy requires client permissions but the request presented no token",)


def test_public_reasons_for_types_and_trust_authority_ids(sim: SimEvidence) -> None:
    d = evaluate(sim, sgx_policy(), "tdx")
    assert d.public_reasons == ("the evidence is TDX, which the policy's attestation_type does not list",)
    policy = sgx_policy()
    policy["sgx"]["policy_ids"] = ["0f0e0d0c-0000-4000-8000-000000000001"]
    d = evaluate(sim, policy, "sgx")
    assert "0f0e0d0c" in d.reasons[0] and "0f0e0d0c" not in d.public_reasons[0]


def test_reserved_td_attribute_bits_denied_unless_allowed(sim: SimEvidence) -> None:
    """A TD attribute bit no TDX module defines: denied unless the policy explicitly allows it."""
    reserved = 1 << 40
    reason = f"reserved TD attribute bits {reserved:016x} are set (TD_ATTRIBUTES {reserved | 1 << 28:016x})"
    denied = evaluate(sim, tdx_policy(), "tdx", extra_td_attributes=reserved)
    assert not denied.allowed
    assert denied.reasons == (
        f"{reason} and the policy does not set tdx.attributes.allow_reserved_td_attributes",
    )
    allowed = evaluate(
        sim, tdx_policy(allow_reserved_td_attributes=True), "tdx", extra_td_attributes=reserved
    )
    assert allowed.allowed
    assert allowed.notes == (
        SIM_NOTE,
        f"{reason}: allowed (tdx.attributes.allow_reserved_td_attributes is true)",
    )
    assert evaluate(sim, tdx_policy(), "tdx").allowed  # no reserved bit set: nothing to allow
    with pytest.raises(ValueError, match="allow_reserved_td_attributes"):  # a TDX-only switch
        TransferPolicyBody.model_validate(sgx_policy(allow_reserved_td_attributes=True))
