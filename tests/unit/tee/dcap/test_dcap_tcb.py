"""Intel TCB level matching tables: SGX, TDX (with the module identity rule), QE identity, status merge."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from keybroker.errors import CollateralError, VerificationError
from keybroker.tee.dcap.abi import TdReportBody, parse_enclave_report_body
from keybroker.tee.dcap.endorsements import (
    EnclaveIdentity,
    EnclaveTcbLevel,
    ModuleTcbLevel,
    TcbInfo,
    TcbLevel,
    TdxModule,
    TdxModuleIdentity,
)
from keybroker.tee.dcap.tcb import (
    check_tdx_module,
    converge_status,
    evaluate_tcb,
    match_platform_level,
    match_qe_identity,
    tdx_module_identity_id,
)

D = datetime(2024, 3, 13, tzinfo=UTC)
OLD = datetime(2023, 8, 9, tzinfo=UTC)


def _svn(*head: int) -> tuple[int, ...]:
    return (*head, *([0] * (16 - len(head))))


def _level(
    sgx: tuple[int, ...], pce: int, status: str, tdx: tuple[int, ...] | None = None, adv: tuple[str, ...] = ()
) -> TcbLevel:
    return TcbLevel(sgx, pce, tdx, D, status, adv)


def _info(
    levels: tuple[TcbLevel, ...], *, tdx: bool = False, identities: tuple[TdxModuleIdentity, ...] = ()
) -> TcbInfo:
    return TcbInfo(
        id="TDX" if tdx else "SGX",
        version=3,
        issue_date=D,
        next_update=D,
        fmspc=bytes(6),
        pce_id=bytes(2),
        tcb_type=0,
        tcb_evaluation_data_number=17,
        tdx_module=TdxModule(bytes(48), bytes(8), b"\xff" * 8) if tdx else None,
        tdx_module_identities=identities,
        tcb_levels=levels,
    )


SGX_INFO = _info(
    (
        _level(_svn(14, 14, 3, 3, 255, 255, 1), 13, "SWHardeningNeeded", adv=("INTEL-SA-00615",)),
        _level(
            _svn(14, 14, 3, 3, 255, 255, 0), 13, "ConfigurationAndSWHardeningNeeded", adv=("INTEL-SA-00615",)
        ),
        _level(_svn(13, 13, 3, 3, 255, 255, 0), 13, "OutOfDate", adv=("INTEL-SA-00828", "INTEL-SA-00615")),
        _level(_svn(2, 2, 2, 2, 0, 0, 0), 5, "Revoked"),
    )
)


@pytest.mark.parametrize(
    ("comps", "pcesvn", "status"),
    [
        (_svn(14, 14, 3, 3, 255, 255, 1), 13, "SWHardeningNeeded"),
        (_svn(20, 20, 9, 9, 255, 255, 9), 99, "SWHardeningNeeded"),  # above the top level
        (_svn(14, 14, 3, 3, 255, 255, 0), 13, "ConfigurationAndSWHardeningNeeded"),
        (_svn(14, 14, 3, 3, 255, 255, 1), 12, "Revoked"),  # PCESVN below the upper levels
        (_svn(13, 99, 3, 3, 255, 255, 1), 13, "OutOfDate"),  # one component lower is enough
        (_svn(14, 13, 3, 3, 255, 255, 1), 13, "OutOfDate"),  # not lexicographic: comp 2 is lower
        (_svn(3, 3, 3, 3, 1, 1, 1), 5, "Revoked"),
    ],
)
def test_sgx_level_matching(comps: tuple[int, ...], pcesvn: int, status: str) -> None:
    assert match_platform_level(SGX_INFO, comps, pcesvn, None).status == status


def test_sgx_no_matching_level() -> None:
    with pytest.raises(VerificationError) as info:
        match_platform_level(SGX_INFO, _svn(1, 1, 1, 1), 13, None)
    assert info.value.check == "tcb_level" and "no matching TCB level" in str(info.value)


MODULE_ID = TdxModuleIdentity(
    id="TDX_01",
    mrsigner=bytes(48),
    attributes=bytes(8),
    attributes_mask=b"\xff" * 8,
    tcb_levels=(
        ModuleTcbLevel(4, D, "UpToDate", ()),
        ModuleTcbLevel(2, OLD, "OutOfDate", ("INTEL-SA-01036",)),
    ),
)
TDX_INFO = _info(
    (
        _level(_svn(2, 2, 2, 2, 3, 1, 0, 3), 11, "UpToDate", tdx=_svn(5, 0, 3)),
        _level(_svn(2, 2, 2, 2, 3, 1, 0, 3), 11, "OutOfDate", tdx=_svn(3, 0, 3), adv=("INTEL-SA-00960",)),
        _level(_svn(2, 2, 2, 2, 3, 1, 0, 3), 11, "OutOfDate", tdx=_svn(3, 0, 2), adv=("INTEL-SA-00982",)),
    ),
    tdx=True,
    identities=(MODULE_ID,),
)
PLATFORM = _svn(2, 2, 2, 2, 3, 1, 0, 3)


def _td(
    tee_tcb_svn: bytes, mrsignerseam: bytes = bytes(48), seam_attributes: bytes = bytes(8)
) -> TdReportBody:
    z48 = bytes(48)
    return TdReportBody(
        body_type=2,
        tee_tcb_svn=tee_tcb_svn,
        mr_seam=z48,
        mr_signer_seam=mrsignerseam,
        seam_attributes=seam_attributes,
        td_attributes=bytes(8),
        xfam=bytes(8),
        mr_td=z48,
        mr_config_id=z48,
        mr_owner=z48,
        mr_owner_config=z48,
        rtmr=(z48, z48, z48, z48),
        report_data=bytes(64),
        tee_tcb_svn2=None,
        mr_service_td=None,
        ext=None,
    )


@pytest.mark.parametrize(
    ("tee_tcb_svn", "status"),
    [
        (bytes(_svn(5, 0, 3)), "UpToDate"),  # module 1.0: all 16 TDX components compared
        (bytes(_svn(4, 0, 3)), "OutOfDate"),  # component 0 (module SVN) below the top level
        (bytes(_svn(2, 0, 3)), None),  # below every level
        # Module major version 1: components 0 and 1 are skipped (the module identity rules them).
        (bytes(_svn(1, 1, 3)), "UpToDate"),
        (bytes(_svn(0, 1, 2)), "OutOfDate"),
        (bytes(_svn(9, 1, 1)), None),
    ],
)
def test_tdx_platform_level_matching(tee_tcb_svn: bytes, status: str | None) -> None:
    if status is None:
        with pytest.raises(VerificationError, match="no matching TCB level"):
            match_platform_level(TDX_INFO, PLATFORM, 11, tee_tcb_svn)
    else:
        assert match_platform_level(TDX_INFO, PLATFORM, 11, tee_tcb_svn).status == status


QE_ID = EnclaveIdentity(
    id="TD_QE",
    version=2,
    issue_date=D,
    next_update=D,
    tcb_evaluation_data_number=17,
    miscselect=0,
    miscselect_mask=0xFFFFFFFF,
    attributes=bytes.fromhex("11000000000000000000000000000000"),
    attributes_mask=bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000"),
    mrsigner=bytes.fromhex("DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5"),
    isvprodid=2,
    tcb_levels=(
        EnclaveTcbLevel(4, D, "UpToDate", ()),
        EnclaveTcbLevel(2, OLD, "OutOfDate", ("INTEL-SA-00999",)),
        EnclaveTcbLevel(1, OLD, "Revoked", ()),
    ),
)


def _qe_report(
    *, isvsvn: int = 4, attributes: bytes = bytes.fromhex("15000000000000000700000000000000"), misc: int = 0
) -> bytes:
    raw = bytearray(384)
    raw[16:20] = misc.to_bytes(4, "little")
    raw[48:64] = attributes
    raw[128:160] = QE_ID.mrsigner
    raw[256:258] = (2).to_bytes(2, "little")
    raw[258:260] = isvsvn.to_bytes(2, "little")
    return bytes(raw)


@pytest.mark.parametrize(
    ("isvsvn", "status"), [(9, "UpToDate"), (4, "UpToDate"), (3, "OutOfDate"), (1, "Revoked")]
)
def test_qe_identity_levels(isvsvn: int, status: str) -> None:
    level = match_qe_identity(QE_ID, parse_enclave_report_body(_qe_report(isvsvn=isvsvn)))
    assert level.status == status


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (_qe_report(isvsvn=0), "below all TD_QE identity TCB levels"),
        (_qe_report(attributes=bytes.fromhex("13000000000000000000000000000000")), "ATTRIBUTES"),
        (_qe_report(misc=1), "MISCSELECT"),
        (_qe_report()[:128] + bytes(32) + _qe_report()[160:], "MRSIGNER"),
        (_qe_report()[:256] + b"\x01\x00" + _qe_report()[258:], "ISVPRODID 1"),
    ],
)
def test_qe_identity_mismatches(report: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message) as info:
        match_qe_identity(QE_ID, parse_enclave_report_body(report))
    assert info.value.check == "qe_identity"


def test_attributes_mask_ignores_masked_bits() -> None:
    # Bit 2 of byte 0 (MODE64BIT) is masked out by FB; XFRM bytes are masked out entirely.
    report = _qe_report(attributes=bytes.fromhex("15000000000000000700000000000000"))
    assert match_qe_identity(QE_ID, parse_enclave_report_body(report)).status == "UpToDate"


@pytest.mark.parametrize(
    ("platform", "components", "result"),
    [
        ("UpToDate", ["UpToDate"], "UpToDate"),
        ("UpToDate", ["OutOfDate"], "OutOfDate"),
        ("SWHardeningNeeded", ["OutOfDate"], "OutOfDate"),
        ("ConfigurationNeeded", ["OutOfDate"], "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", ["UpToDate", "OutOfDate"], "OutOfDateConfigurationNeeded"),
        ("OutOfDate", ["OutOfDate"], "OutOfDate"),
        ("ConfigurationNeeded", ["UpToDate"], "ConfigurationNeeded"),
        ("UpToDate", ["OutOfDate", "Revoked"], "Revoked"),
        ("Revoked", ["UpToDate"], "Revoked"),
    ],
)
def test_status_convergence(platform: str, components: list[str], result: str) -> None:
    assert converge_status(platform, components) == result


def test_tdx_module_identity_rules() -> None:
    assert tdx_module_identity_id(1) == "TDX_01" and tdx_module_identity_id(0x1A) == "TDX_1A"
    # Major version 0: tdxModule applies, no identity returned.
    assert check_tdx_module(TDX_INFO, _td(bytes(_svn(5, 0, 3)))) is None
    assert check_tdx_module(TDX_INFO, _td(bytes(_svn(4, 1, 3)))) is MODULE_ID
    with pytest.raises(VerificationError, match="no module identity TDX_03") as info:
        check_tdx_module(TDX_INFO, _td(bytes(_svn(4, 3, 3))))
    assert info.value.check == "tdx_module"
    with pytest.raises(VerificationError, match="MRSIGNERSEAM"):
        check_tdx_module(TDX_INFO, _td(bytes(_svn(4, 1, 3)), mrsignerseam=b"\x01" * 48))
    with pytest.raises(VerificationError, match="SEAMATTRIBUTES"):
        check_tdx_module(
            TDX_INFO, _td(bytes(_svn(4, 1, 3)), seam_attributes=b"\x00\x00\x00\x80\x00\x00\x00\x00")
        )


def test_evaluate_tdx_merges_module_and_qe() -> None:
    qe_ok = EnclaveTcbLevel(4, D, "UpToDate", ())
    qe_old = EnclaveTcbLevel(2, OLD, "OutOfDate", ("INTEL-SA-00999",))
    # Module 1.x, minor SVN 4: module UpToDate; platform (from index 2) UpToDate.
    td = _td(bytes(_svn(4, 1, 3)))
    ev = evaluate_tcb(TDX_INFO, PLATFORM, 11, qe_ok, td, MODULE_ID)
    assert (ev.status, ev.module_status, ev.advisory_ids) == ("UpToDate", "UpToDate", ())
    # Minor SVN 3: module OutOfDate (level isvsvn 2) turns the result OutOfDate, advisories appended.
    ev = evaluate_tcb(TDX_INFO, PLATFORM, 11, qe_old, _td(bytes(_svn(3, 1, 3))), MODULE_ID)
    assert ev.status == "OutOfDate" and ev.platform_status == "UpToDate"
    assert ev.advisory_ids == ("INTEL-SA-00999", "INTEL-SA-01036")
    assert ev.tcb_date == OLD
    with pytest.raises(VerificationError, match="TDX module TDX_01 SVN 1 is below"):
        evaluate_tcb(TDX_INFO, PLATFORM, 11, qe_ok, _td(bytes(_svn(1, 1, 3))), MODULE_ID)


def test_evaluate_sgx_qe_out_of_date() -> None:
    qe_old = EnclaveTcbLevel(2, OLD, "OutOfDate", ("INTEL-SA-00615", "INTEL-SA-00999"))
    ev = evaluate_tcb(SGX_INFO, _svn(14, 14, 3, 3, 255, 255, 0), 13, qe_old, None, None)
    assert ev.status == "OutOfDateConfigurationNeeded"
    assert ev.platform_status == "ConfigurationAndSWHardeningNeeded"
    assert ev.advisory_ids == ("INTEL-SA-00615", "INTEL-SA-00999")  # de-duplicated, platform first


def test_tdx_level_without_tdx_components_is_an_error() -> None:
    broken = replace(TDX_INFO, tcb_levels=(_level(PLATFORM, 11, "UpToDate"),))
    with pytest.raises(VerificationError, match="no TDX components"):
        match_platform_level(broken, PLATFORM, 11, bytes(16))


def test_levels_are_sorted_as_intels_qvl_sorts_them() -> None:
    """QVL's order is lexicographic over the SGX component SVNs, then PCESVN, then the TDX
    component SVNs (``TcbLevel::operator>``), not dominance: a platform above two levels matches
    the lexicographically higher one, whatever order the levels were given in."""
    low_first = _level(_svn(4, 9), 13, "UpToDate")
    high_first = _level(_svn(5, 0), 13, "OutOfDate")
    for given in ((low_first, high_first), (high_first, low_first)):
        info = _info(given)
        assert info.tcb_levels == (high_first, low_first)
        assert match_platform_level(info, _svn(5, 9), 13, None).status == "OutOfDate"
    assert match_platform_level(_info((low_first, high_first)), _svn(4, 9), 13, None).status == "UpToDate"
    # PCESVN before TDX components; TDX components break a tie of both
    a = _level(PLATFORM, 11, "OutOfDate", tdx=_svn(9, 0, 9))
    b = _level(PLATFORM, 12, "UpToDate", tdx=_svn(1, 0, 1))
    c = _level(PLATFORM, 12, "SWHardeningNeeded", tdx=_svn(1, 0, 0))
    assert _info((c, a, b), tdx=True).tcb_levels == (b, c, a)


def test_duplicated_levels_are_refused() -> None:
    with pytest.raises(CollateralError, match="same TCB"):
        _info((_level(_svn(4), 13, "UpToDate"), _level(_svn(4), 13, "OutOfDate")))
    # the same SGX TCB with different TDX components are different levels
    assert len(_info(TDX_INFO.tcb_levels, tdx=True).tcb_levels) == 3
