"""Every ``dcap`` case of the shared corpus: verdict, TCB status and advisories at ``verify_at``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.vectors.corpus import load_cases, read_bytes, read_text, verify_at

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.dcap.claims import SgxClaims, TdxClaims
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import CHECKS, VerifiedQuote, verify_quote

CASES = load_cases("dcap")

#: The check each reject case must fail, with why (cases.json gives only a reason text).
REJECT_CHECK = {
    "dcap-tdx-outdated-notcb": "tcb_level",
    # go-tdx-guest appended "extra bytes(only for testing purpose)": only zero padding may follow
    # a quote (test_gtdx_quote_without_its_extra_bytes checks the TCB level without them)
    "dcap-tdx-gtdx-spr-e4-notcb": "parse",
    "dcap-tdx-automata-q5-notcb": "tcb_level",
    "dcap-tdx-trustee-q5-notcb": "tcb_level",
    "dcap-tdx-godcap1-notcb": "tcb_level",
    "dcap-sgx-before-window": "validity_window",  # TCB Info issueDate is one second later
    "dcap-tdx-after-window": "validity_window",  # PCK CRL nextUpdate passed one second before
    "dcap-tdx-at-today": "validity_window",
    "dcap-tampered-sgx_quote.report_data_flip": "quote_signature",
    "dcap-tampered-sgx_quote.qe_report_flip": "qe_report_signature",
    "dcap-tampered-sgx_quote.isv_sig_flip": "quote_signature",
    "dcap-tampered-tdx_quote.report_data_flip": "quote_signature",
    "dcap-tampered-tdx_quote.mrtd_flip": "quote_signature",
    "dcap-tampered-tdx_quote.qe_report_flip": "qe_report_signature",
    "dcap-tampered-tdx_quote.truncated": "parse",
    "dcap-tampered-cos113": "quote_signature",
    "dcap-tampered-tcbinfo": "tcb_info_signature",
    "dcap-tampered-tcbsig": "tcb_info_signature",
    "dcap-tampered-qeid": "qe_identity_signature",
    "dcap-mismatch-tdxquote-sgxcoll": "tee_type",  # TDX quote, SGX TCB Info
    "dcap-mismatch-fmspc": "fmspc",
}


def _collateral(c: dict[str, Any]) -> QuoteCollateral:
    return QuoteCollateral.from_json(read_text(c["collateral"]))


def _verify(c: dict[str, Any]) -> VerifiedQuote:
    return verify_quote(read_bytes(c["quote"]), _collateral(c), at=verify_at(c))


def test_every_reject_case_has_an_expected_check() -> None:
    rejects = {c["id"] for c in CASES if c["expect"]["verdict"] == "reject"}
    assert rejects == set(REJECT_CHECK)


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case(c: dict[str, Any]) -> None:
    expect = c["expect"]
    if expect["verdict"] == "reject":
        want = REJECT_CHECK[c["id"]]
        if want == "parse":
            with pytest.raises(EvidenceParseError) as parse_info:
                _verify(c)
            assert parse_info.value.field is not None
        else:
            with pytest.raises(VerificationError) as info:
                _verify(c)
            assert info.value.check == want, str(info.value)
            if want == "tcb_level":
                assert "no matching TCB level" in str(info.value)
        return

    result = _verify(c)
    assert result.checks == tuple(ch for ch in CHECKS if result.tee == "tdx" or ch != "tdx_module")
    assert result.root == "intel" and not result.sim
    assert result.report_data == result.claims.report_data
    if "status" in expect:
        assert result.status == expect["status"]
        assert list(result.advisory_ids) == expect["advisories"]
    if expect["verdict"] == "accept":
        assert not result.claims.debug
        if isinstance(result.claims, TdxClaims):
            assert result.claims.sept_ve_disable
        lo, hi = c["collateral_window"]
        assert result.collateral_expiry.timestamp() == hi


def test_gtdx_quote_without_its_extra_bytes() -> None:
    """The go-tdx-guest quote is refused for its non-zero trailing bytes; without them (or with
    zeros in their place) it reaches TCB matching and fails there, as go-tdx-guest says."""
    (c,) = [c for c in CASES if c["id"] == "dcap-tdx-gtdx-spr-e4-notcb"]
    raw = read_bytes(c["quote"])
    with pytest.raises(EvidenceParseError) as info:
        _verify(c)
    assert info.value.field == "trailing_bytes" and b"extra bytes" in raw[info.value.offset or 0 :]
    extra = raw.index(b"\nextra bytes(only for testing purpose)\n")
    for quote in (raw[:extra], raw[:extra] + bytes(len(raw) - extra)):
        with pytest.raises(VerificationError) as verification:
            verify_quote(quote, _collateral(c), at=verify_at(c))
        assert verification.value.check == "tcb_level"


#: The claim that decides each policy-dependent case (dcap-qvl rejects all three kinds).
def test_policy_dependent_debug_enclave() -> None:
    (c,) = [c for c in CASES if c["id"] == "dcap-sgx-occlum-debug"]
    claims = _verify(c).claims
    assert isinstance(claims, SgxClaims)
    assert claims.debug and claims.attributes.to_dict()["debug"] is True


def test_policy_dependent_debug_td() -> None:
    (c,) = [c for c in CASES if c["id"] == "dcap-tdx-trustee-q4-debug"]
    claims = _verify(c).claims
    assert isinstance(claims, TdxClaims)
    assert claims.debug and claims.to_dict()["td_attributes"]["debug"] is True


def test_policy_dependent_sept_ve_disable_off() -> None:
    (c,) = [c for c in CASES if c["id"] == "dcap-tdx-azure-td"]
    result = _verify(c)
    assert isinstance(result.claims, TdxClaims)
    assert not result.claims.sept_ve_disable and not result.claims.debug
    assert result.status == "OutOfDate"


def test_policy_dependent_mrservicetd() -> None:
    (c,) = [c for c in CASES if c["id"] == "dcap-tdx-alibaba-q5-servicetd"]
    claims = _verify(c).claims
    assert isinstance(claims, TdxClaims)
    assert claims.td_report_version == "1.5"
    assert claims.mr_service_td is not None and any(claims.mr_service_td)
    assert claims.to_dict()["mr_service_td"] == claims.mr_service_td.hex()


ACCEPTED = [c for c in CASES if c["expect"]["verdict"] != "reject" and c["id"] != "dcap-tdx-phala-at-end"]


@pytest.mark.parametrize("c", ACCEPTED, ids=[c["id"] for c in ACCEPTED])
def test_window_bounds_are_inclusive(c: dict[str, Any]) -> None:
    """Valid at both ends of the collateral window, rejected one second outside either."""
    quote, collateral = read_bytes(c["quote"]), _collateral(c)
    lo, hi = (datetime.fromtimestamp(t, UTC) for t in c["collateral_window"])
    for at in (lo, hi):
        assert verify_quote(quote, collateral, at=at).collateral_expiry == hi
    for at in (lo - timedelta(seconds=1), hi + timedelta(seconds=1)):
        with pytest.raises(VerificationError) as info:
            verify_quote(quote, collateral, at=at)
        assert info.value.check == "validity_window"
