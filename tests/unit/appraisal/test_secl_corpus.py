"""Real DCAP quotes from the shared corpus through ``secl.evaluate`` at their ``verify_at``."""

from __future__ import annotations

from typing import Any

import pytest
from tests.vectors.corpus import load_cases, read_bytes, read_text, verify_at

from keybroker.appraisal import secl
from keybroker.appraisal.decision import Decision
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.tee.dcap.claims import SgxClaims
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import verified_evidence
from keybroker.tee.dcap.verify import VerifiedQuote, verify_quote

CASES = [c for c in load_cases("dcap") if c["expect"]["verdict"] != "reject"]


def _verify(c: dict[str, Any]) -> VerifiedQuote:
    collateral = QuoteCollateral.from_json(read_text(c["collateral"]))
    return verify_quote(read_bytes(c["quote"]), collateral, at=verify_at(c))


def _own_policy(v: VerifiedQuote, *, allow_debug: bool) -> dict[str, Any]:
    """A policy made of the quote's own claims: it must allow that quote."""
    c = v.claims
    if isinstance(c, SgxClaims):
        attrs: dict[str, Any] = {
            "mrsigner": [c.mr_signer.hex()],
            "isvprodid": [c.isv_prod_id],
            "mrenclave": [c.mr_enclave.hex()],
            "isvsvn": c.isv_svn,
        }
        return {"attestation_type": ["SGX"], "sgx": {"attributes": attrs}, "allow_debug": allow_debug}
    attrs = {
        "mrsignerseam": [c.mr_signer_seam.hex()],
        "mrseam": [c.mr_seam.hex()],
        "seamsvn": c.seam_svn,
        "mrtd": [c.mr_td.hex()],
        **{f"rtmr{i}": c.rtmr[i].hex() for i in range(4)},
    }
    return {"attestation_type": ["TDX"], "tdx": {"attributes": attrs}, "allow_debug": allow_debug}


def _evaluate(policy: dict[str, Any], v: VerifiedQuote) -> Decision:
    return secl.evaluate(
        TransferPolicyBody.model_validate(policy),
        verified_evidence(v),
        client_permissions=None,
        policy_id="corpus",
    )


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_own_claims_allow_and_one_changed_field_denies(c: dict[str, Any]) -> None:
    v = _verify(c)
    assert not v.sim
    allowed = _evaluate(_own_policy(v, allow_debug=v.claims.debug), v)
    assert allowed.allowed, allowed.reasons
    if v.status == "UpToDate" and not v.claims.debug:
        assert allowed.notes == ()
        assert allowed.ear_status == "affirming"
    else:
        assert allowed.ear_status == "warning"
    if v.status != "UpToDate":
        advisories = f"; advisories {', '.join(v.advisory_ids)}" if v.advisory_ids else ""
        assert f"TCB status {v.status} allowed (enforce_tcb_upto_date is false){advisories}" in allowed.notes

    policy = _own_policy(v, allow_debug=v.claims.debug)
    if isinstance(v.claims, SgxClaims):
        policy["sgx"]["attributes"]["isvsvn"] = v.claims.isv_svn + 1
        reason = f"isvsvn {v.claims.isv_svn} is below the policy minimum {v.claims.isv_svn + 1}"
    else:
        other = "ff" * 48 if v.claims.rtmr[1] != bytes.fromhex("ff" * 48) else "ee" * 48
        policy["tdx"]["attributes"]["rtmr1"] = other
        reason = f"rtmr1 {v.claims.rtmr[1].hex()} differs from the policy's {other}"
    denied = _evaluate(policy, v)
    assert not denied.allowed
    assert denied.reasons == (reason,)


@pytest.mark.parametrize("case_id", ["dcap-sgx-occlum-debug", "dcap-tdx-trustee-q4-debug"])
def test_debug_corpus_quotes_denied_without_allow_debug(case_id: str) -> None:
    (c,) = [c for c in CASES if c["id"] == case_id]
    v = _verify(c)
    d = _evaluate(_own_policy(v, allow_debug=False), v)
    what, flag = ("enclave", "ATTRIBUTES.DEBUG") if v.tee == "sgx" else ("TD", "TD_ATTRIBUTES.DEBUG")
    assert d.reasons[0] == f"debug {what} ({flag} is set) and the policy does not set allow_debug"
    assert not d.allowed


def test_enforced_tcb_denies_the_out_of_date_corpus_quote() -> None:
    (c,) = [c for c in CASES if c["id"] == "dcap-sgx-automata-godcap0"]
    v = _verify(c)
    policy = _own_policy(v, allow_debug=False)
    policy["sgx"]["attributes"]["enforce_tcb_upto_date"] = True
    d = _evaluate(policy, v)
    assert d.reasons == (
        "TCB status SWHardeningNeeded is not UpToDate (enforce_tcb_upto_date is true); advisories INTEL-SA-00615",
    )
