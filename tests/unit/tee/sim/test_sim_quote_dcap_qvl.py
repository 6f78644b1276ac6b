"""Simulated quotes through an independent verifier: dcap-qvl with the dev root.

dcap-qvl is the oracle here because it shares no code with the simulator: if it accepts
a sim quote, the layout, the signatures, the PCK extension and the collateral are in
Intel's real format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import struct
from typing import Any, Literal

import dcap_qvl  # type: ignore[import-untyped]
import pytest

from keybroker.tee.sim import (
    DEFAULT_MRENCLAVE,
    DEFAULT_MRSIGNER,
    DEFAULT_MRTD,
    DEFAULT_RTMRS,
    PLATFORM_SGX,
    PLATFORM_TDX,
    QE_IDENTITY,
    SGX_TCB,
    TCB_CHOICES,
    TD_QE_IDENTITY,
    TDX_TCB,
    DevPki,
    SimQeIdentity,
    TcbChoice,
    sgx_quote,
    tdx_quote,
)
from keybroker.tee.sim import quote as layout

REPORT_DATA = hashlib.sha512(b"keybroker sim test report data").digest()


Tee = Literal["sgx", "tdx"]


def _verify(pki: DevPki, quote: bytes, tee: Tee, at_secs: int) -> Any:
    coll = dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json(tee))
    return dcap_qvl.verify_with_root_ca(quote, coll, pki.root_der, at_secs)


def _report(result: Any) -> dict[str, Any]:
    doc = json.loads(result.to_json())
    (body,) = doc["report"].values()
    assert isinstance(body, dict)
    return body


def _quote(pki: DevPki, tee: Tee, **kw: Any) -> bytes:
    return (
        sgx_quote(pki, report_data=REPORT_DATA, **kw)
        if tee == "sgx"
        else tdx_quote(pki, report_data=REPORT_DATA, **kw)
    )


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
@pytest.mark.parametrize("tcb", [c for c in TCB_CHOICES if c != "revoked"])
def test_each_tcb_level_verifies_with_its_status_and_advisories(
    pki: DevPki, tee: Tee, tcb: TcbChoice, at_secs: int
) -> None:
    result = _verify(pki, _quote(pki, tee, tcb=tcb), tee, at_secs)
    level = (SGX_TCB if tee == "sgx" else TDX_TCB)[tcb]
    assert result.status == level.status
    assert result.advisory_ids == list(level.advisory_ids)
    assert json.loads(result.to_json())["qe_status"]["status"] == "UpToDate"


def test_levels_are_distinct() -> None:
    for table in (SGX_TCB, TDX_TCB):
        assert [table[c].status for c in TCB_CHOICES] == [
            "UpToDate",
            "SWHardeningNeeded",
            "OutOfDate",
            "Revoked",
        ]
        assert table["uptodate"].advisory_ids == ()
        assert table["outofdate"].advisory_ids  # OutOfDate comes with advisory IDs


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_revoked_tcb_level_is_rejected(pki: DevPki, tee: Tee, at_secs: int) -> None:
    with pytest.raises(ValueError, match="TCB status is invalid: Revoked"):
        _verify(pki, _quote(pki, tee, tcb="revoked"), tee, at_secs)


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_debug_is_rejected_by_dcap_qvl(pki: DevPki, tee: Tee, at_secs: int) -> None:
    """dcap-qvl hard-rejects debug enclaves and debug TDs as policy, although the quote is
    cryptographically valid; keybroker's verifier exposes the flag as a claim instead."""
    with pytest.raises(ValueError, match="Debug mode is enabled"):
        _verify(pki, _quote(pki, tee, debug=True), tee, at_secs)


def test_debug_flag_is_in_the_attributes(pki: DevPki) -> None:
    sgx_on = dcap_qvl.parse_quote(sgx_quote(pki, report_data=REPORT_DATA, debug=True)).report
    sgx_off = dcap_qvl.parse_quote(sgx_quote(pki, report_data=REPORT_DATA)).report
    assert isinstance(sgx_on, dcap_qvl.SgxEnclaveReport) and isinstance(sgx_off, dcap_qvl.SgxEnclaveReport)
    assert sgx_on.attributes[0] & 0x02 and not sgx_off.attributes[0] & 0x02
    td_on = dcap_qvl.parse_quote(tdx_quote(pki, report_data=REPORT_DATA, debug=True)).report
    td_off = dcap_qvl.parse_quote(tdx_quote(pki, report_data=REPORT_DATA, sept_ve_disable=False)).report
    assert isinstance(td_on, dcap_qvl.TdReport10) and isinstance(td_off, dcap_qvl.TdReport10)
    assert struct.unpack("<Q", td_on.td_attributes)[0] == 1 | 1 << 28
    assert struct.unpack("<Q", td_off.td_attributes)[0] == 0


def test_sept_ve_disable_off_is_rejected_by_dcap_qvl(pki: DevPki, at_secs: int) -> None:
    """Like debug, a policy decision that dcap-qvl hard-codes."""
    with pytest.raises(ValueError, match="SEPT_VE_DISABLE is not enabled"):
        _verify(pki, tdx_quote(pki, report_data=REPORT_DATA, sept_ve_disable=False), "tdx", at_secs)


def test_sgx_chosen_fields_show_up_in_the_verified_report(pki: DevPki, at_secs: int) -> None:
    mrenclave, mrsigner = bytes(range(32)), bytes(range(100, 132))
    quote = sgx_quote(
        pki, report_data=REPORT_DATA, mrenclave=mrenclave, mrsigner=mrsigner, isvprodid=0x1234, isvsvn=7
    )
    body = _report(_verify(pki, quote, "sgx", at_secs))
    assert body["mr_enclave"] == mrenclave.hex()
    assert body["mr_signer"] == mrsigner.hex()
    assert body["isv_prod_id"] == 0x1234
    assert body["isv_svn"] == 7
    assert body["report_data"] == REPORT_DATA.hex()
    assert body["cpu_svn"] == SGX_TCB["uptodate"].cpusvn.hex()


def test_sgx_defaults_are_recognisable(pki: DevPki, at_secs: int) -> None:
    body = _report(_verify(pki, sgx_quote(pki, report_data=REPORT_DATA), "sgx", at_secs))
    assert bytes.fromhex(body["mr_enclave"]) == DEFAULT_MRENCLAVE == b"KB-SIM MRENCLAVE".ljust(32, b"\0")
    assert bytes.fromhex(body["mr_signer"]) == DEFAULT_MRSIGNER
    assert (body["isv_prod_id"], body["isv_svn"]) == (0, 0)


def test_tdx_chosen_fields_show_up_in_the_verified_report(pki: DevPki, at_secs: int) -> None:
    fields = {
        name: hashlib.sha384(name.encode()).digest()
        for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam")
    }
    quote = tdx_quote(
        pki,
        report_data=REPORT_DATA,
        seamsvn=0x0107,
        mrtd=fields["mrtd"],
        rtmr0=fields["rtmr0"],
        rtmr1=fields["rtmr1"],
        rtmr2=fields["rtmr2"],
        rtmr3=fields["rtmr3"],
        mrseam=fields["mrseam"],
    )
    body = _report(_verify(pki, quote, "tdx", at_secs))
    assert body["mr_td"] == fields["mrtd"].hex()
    for i in range(4):
        assert body[f"rt_mr{i}"] == fields[f"rtmr{i}"].hex()
    assert body["mr_seam"] == fields["mrseam"].hex()
    assert body["mr_signer_seam"] == "00" * 48
    assert body["report_data"] == REPORT_DATA.hex()
    tee_tcb_svn = bytes.fromhex(body["tee_tcb_svn"])
    assert tee_tcb_svn[:2] == b"\x07\x01"  # SEAMSVN 0x0107: minor 7, major 1
    components = TDX_TCB["uptodate"].tdx_components
    assert components is not None and tee_tcb_svn[2:] == components[2:]
    assert body["td_attributes"] == (1 << 28).to_bytes(8, "little").hex()


def test_tdx_defaults_are_recognisable(pki: DevPki, at_secs: int) -> None:
    body = _report(_verify(pki, tdx_quote(pki, report_data=REPORT_DATA), "tdx", at_secs))
    assert bytes.fromhex(body["mr_td"]) == DEFAULT_MRTD == b"KB-SIM MRTD".ljust(48, b"\0")
    assert [bytes.fromhex(body[f"rt_mr{i}"]) for i in range(4)] == list(DEFAULT_RTMRS)


def test_tdx_module_identity_is_checked(pki: DevPki, at_secs: int) -> None:
    """MRSIGNERSEAM must be Intel's (zeros) and the module SVN must reach the TDX_01 level."""
    with pytest.raises(ValueError, match="TDX module MRSIGNER mismatch"):
        _verify(pki, tdx_quote(pki, report_data=REPORT_DATA, mrsignerseam=b"\x01" * 48), "tdx", at_secs)
    with pytest.raises(ValueError, match="TDX module ISVSVN 1 is below"):
        _verify(pki, tdx_quote(pki, report_data=REPORT_DATA, seamsvn=0x0101), "tdx", at_secs)
    with pytest.raises(ValueError, match="No TDX module identity with id TDX_02"):
        _verify(pki, tdx_quote(pki, report_data=REPORT_DATA, seamsvn=0x0201), "tdx", at_secs)


def test_qe_report_carries_the_dev_qe_identity(pki: DevPki) -> None:
    cases: list[tuple[Tee, SimQeIdentity]] = [("sgx", QE_IDENTITY), ("tdx", TD_QE_IDENTITY)]
    for tee, qe in cases:
        quote = _quote(pki, tee)
        if tee == "sgx":
            start = layout.HEADER_SIZE + layout.SGX_REPORT_BODY_SIZE + 4 + 64 + 64
        else:
            start = layout.HEADER_SIZE + layout.TD_REPORT10_SIZE + 4 + 64 + 64 + 6
        qe_report = quote[start : start + layout.SGX_REPORT_BODY_SIZE]
        assert qe_report[layout.RB_MRSIGNER : layout.RB_MRSIGNER + 32] == qe.mrsigner
        assert qe_report[layout.RB_MRENCLAVE : layout.RB_MRENCLAVE + 32] == qe.mrenclave
        assert struct.unpack_from("<HH", qe_report, layout.RB_ISVPRODID) == (qe.isvprodid, qe.isvsvn)
        ak = quote[start - 64 - (6 if tee == "tdx" else 0) : start - (6 if tee == "tdx" else 0)]
        expected = hashlib.sha256(ak + layout.QE_AUTH_DATA).digest() + bytes(32)
        assert qe_report[layout.RB_REPORTDATA :] == expected


def test_revoked_pck_is_rejected(fresh_pki: DevPki, at_secs: int) -> None:
    sgx = sgx_quote(fresh_pki, report_data=REPORT_DATA)
    tdx = tdx_quote(fresh_pki, report_data=REPORT_DATA)
    assert _verify(fresh_pki, sgx, "sgx", at_secs).status == "UpToDate"
    fresh_pki.revoke_pck(PLATFORM_SGX)
    with pytest.raises(ValueError, match="CertRevoked"):
        _verify(fresh_pki, sgx, "sgx", at_secs)
    # Only the processor CA's CRL changed: the TDX platform (platform CA) still verifies.
    assert _verify(fresh_pki, tdx, "tdx", at_secs).status == "UpToDate"
    fresh_pki.revoke_pck(PLATFORM_TDX, tcb="uptodate")
    with pytest.raises(ValueError, match="CertRevoked"):
        _verify(fresh_pki, tdx, "tdx", at_secs)
    ood = tdx_quote(fresh_pki, report_data=REPORT_DATA, tcb="outofdate")
    assert _verify(fresh_pki, ood, "tdx", at_secs).status == "OutOfDate"


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_without_dev_trust_the_quote_is_rejected(pki: DevPki, tee: Tee, at_secs: int) -> None:
    coll = dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json(tee))
    with pytest.raises(ValueError, match="Verification failed"):
        dcap_qvl.verify(_quote(pki, tee), coll, at_secs)


def test_another_dev_pki_is_not_trusted(pki: DevPki, fresh_pki: DevPki, at_secs: int) -> None:
    coll = dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json("sgx"))
    with pytest.raises(ValueError, match="Verification failed"):
        dcap_qvl.verify_with_root_ca(
            sgx_quote(pki, report_data=REPORT_DATA), coll, fresh_pki.root_der, at_secs
        )


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_collateral_window(pki: DevPki, tee: Tee, issued: dt.datetime) -> None:
    quote = _quote(pki, tee)
    next_update = int((issued + dt.timedelta(days=30)).timestamp())
    assert _verify(pki, quote, tee, int(issued.timestamp())).status == "UpToDate"
    assert _verify(pki, quote, tee, next_update - 1).status == "UpToDate"
    with pytest.raises(ValueError, match="Expired"):  # dcap-qvl: CRL valid while now < nextUpdate
        _verify(pki, quote, tee, next_update)


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_wrong_tee_collateral_is_rejected(pki: DevPki, tee: Tee, at_secs: int) -> None:
    other: Tee = "tdx" if tee == "sgx" else "sgx"
    with pytest.raises(ValueError, match="Verification failed"):
        _verify(pki, _quote(pki, tee), other, at_secs)


def test_report_data_must_be_exactly_64_bytes(pki: DevPki) -> None:
    with pytest.raises(ValueError, match="report data must be exactly 64 bytes, got 63"):
        sgx_quote(pki, report_data=bytes(63))
    with pytest.raises(ValueError, match="report data must be exactly 64 bytes, got 65"):
        tdx_quote(pki, report_data=bytes(65))
    with pytest.raises(ValueError, match="MRTD must be exactly 48 bytes, got 32"):
        tdx_quote(pki, report_data=bytes(64), mrtd=bytes(32))
    with pytest.raises(ValueError, match="ISVSVN must be in 0..65535"):
        sgx_quote(pki, report_data=bytes(64), isvsvn=70000)
    with pytest.raises(ValueError, match="is a TDX platform, not SGX"):
        sgx_quote(pki, report_data=bytes(64), platform=PLATFORM_TDX)
    with pytest.raises(ValueError, match="is a SGX platform, not TDX"):
        tdx_quote(pki, report_data=bytes(64), platform=PLATFORM_SGX)


def _signed_regions(tee: Tee, quote: bytes) -> dict[str, range]:
    """Byte ranges of a sim quote whose every byte is covered by a signature or hash."""
    hdr = layout.HEADER_SIZE
    body_end = hdr + (layout.SGX_REPORT_BODY_SIZE if tee == "sgx" else layout.TD_REPORT10_SIZE)
    sig = body_end + 4
    ak = sig + 64
    qe_report = ak + 64 + (0 if tee == "sgx" else 6)
    qe_sig = qe_report + layout.SGX_REPORT_BODY_SIZE
    auth = qe_sig + 64
    auth_end = auth + 2 + len(layout.QE_AUTH_DATA)
    assert quote[auth : auth + 2] == struct.pack("<H", 32)
    return {
        "header": range(0, hdr),
        "body": range(hdr, body_end),
        "signature data length": range(body_end, sig),
        "quote signature": range(sig, ak),
        "attestation key": range(ak, ak + 64),
        "QE report": range(qe_report, qe_sig),
        "QE report signature": range(qe_sig, auth),
        "QE auth data": range(auth, auth_end),
    }


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_every_single_byte_change_to_a_signed_region_is_rejected(pki: DevPki, tee: Tee, at_secs: int) -> None:
    """Full sweep: each byte of header, body, signature, AK, QE report, its signature and the
    QE auth data, changed to another value (seeded), makes dcap-qvl reject the quote."""
    quote = _quote(pki, tee)
    coll = dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json(tee))
    assert dcap_qvl.verify_with_root_ca(quote, coll, pki.root_der, at_secs).status == "UpToDate"
    rng = random.Random(f"sweep-{tee}")
    accepted: list[tuple[str, int]] = []
    count = 0
    for region, positions in _signed_regions(tee, quote).items():
        for i in positions:
            tampered = bytearray(quote)
            tampered[i] ^= rng.randrange(1, 256)
            count += 1
            try:
                dcap_qvl.verify_with_root_ca(bytes(tampered), coll, pki.root_der, at_secs)
            except ValueError:
                continue
            accepted.append((region, i))
    assert count > 1000
    assert accepted == []
