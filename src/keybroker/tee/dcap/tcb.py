"""Intel's TCB evaluation: platform TCB level, TDX module identity, QE identity, status merge.

Follows Intel's Quote Verification Library (QVL), "Quote verification" steps 4.1.2.5.12
(TDX module identity), 4.1.2.5.16 (QE identity), 4.1.2.5.18 / 4.1.2.5.1-2 (``sgxEvaluateTCB`` /
``tdxEvaluateTCB``: level matching and ``convergeTcbStatuses``) over TCB Info v2/v3 and Enclave
Identity v2 (Intel PCS API v4 data models):

* SGX: the first TCB level, in QVL's order (highest SGX component SVNs, then PCESVN, then TDX
  component SVNs, first: ``collateral.parse_tcb_info`` sorts them so, whatever the JSON order),
  whose 16 SGX component SVNs are all <= the PCK certificate's and whose PCESVN <= the PCK
  certificate's.
* TDX: additionally all 16 TDX components <= TEE_TCB_SVN; when TEE_TCB_SVN[1] (the TDX module
  major version) is non-zero, components 0 and 1 are skipped and the module is evaluated through
  ``tdxModuleIdentities["TDX_<major as %02X>"]`` by TEE_TCB_SVN[0] (its minor SVN).
* The QE report's ISVSVN selects a QE identity TCB level.
* Merge: any OutOfDate component turns UpToDate/SWHardeningNeeded into OutOfDate and
  ConfigurationNeeded/ConfigurationAndSWHardeningNeeded into OutOfDateConfigurationNeeded; any
  Revoked component makes it Revoked. Advisory IDs: platform, then QE, then TDX module.

Not done: the TD-relaunch advice of QVL (TDRelaunchAdvised, from TEE_TCB_SVN2); the status here is
for the TCB the TD runs at per TEE_TCB_SVN, which is what ``tdxEvaluateTCB`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from keybroker.errors import VerificationError
from keybroker.tee.dcap.abi import EnclaveReportBody, TdReportBody
from keybroker.tee.dcap.endorsements import (
    EnclaveIdentity,
    EnclaveTcbLevel,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
)

__all__ = [
    "TcbEvaluation",
    "check_tdx_module",
    "converge_status",
    "evaluate_tcb",
    "match_platform_level",
    "match_qe_identity",
    "tdx_module_identity_id",
]

_TO_OUT_OF_DATE: Final = {
    "UpToDate": "OutOfDate",
    "SWHardeningNeeded": "OutOfDate",
    "ConfigurationNeeded": "OutOfDateConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded": "OutOfDateConfigurationNeeded",
}


@dataclass(frozen=True, slots=True)
class TcbEvaluation:
    """The outcome of Intel's TCB evaluation for one quote."""

    status: str
    advisory_ids: tuple[str, ...]
    platform_status: str
    qe_status: str
    module_status: str | None
    #: Earliest tcbDate among the matched levels (platform, QE, module).
    tcb_date: datetime
    platform_level: TcbLevel


def converge_status(platform_status: str, component_statuses: list[str]) -> str:
    """QVL ``convergeTcbStatuses``: fold QE / TDX-module statuses into the platform status."""
    status = platform_status
    if "OutOfDate" in component_statuses:
        status = _TO_OUT_OF_DATE.get(status, status)
    if "Revoked" in component_statuses:
        status = "Revoked"
    return status


def _ge(values: bytes | tuple[int, ...], level: tuple[int, ...], start: int = 0) -> bool:
    return all(values[i] >= level[i] for i in range(start, 16))


def match_platform_level(
    tcb_info: TcbInfo, pck_components: tuple[int, ...], pcesvn: int, tee_tcb_svn: bytes | None
) -> TcbLevel:
    """The first matching platform TCB level; ``VerificationError(check="tcb_level")`` if none."""
    tdx = tee_tcb_svn is not None
    start = 2 if tdx and tee_tcb_svn is not None and tee_tcb_svn[1] > 0 else 0
    for level in tcb_info.tcb_levels:
        if not _ge(pck_components, level.sgx_components) or pcesvn < level.pcesvn:
            continue
        if tee_tcb_svn is not None:
            if level.tdx_components is None:
                raise VerificationError("TCB Info has no TDX components for a TDX quote", check="tcb_level")
            if not _ge(tee_tcb_svn, level.tdx_components, start):
                continue
        return level
    what = f"PCK SGX TCB {list(pck_components)}, PCESVN {pcesvn}"
    if tee_tcb_svn is not None:
        what += f", TEE_TCB_SVN {tee_tcb_svn.hex()}" + (" (from index 2)" if start else "")
    raise VerificationError(
        f"no matching TCB level: {what} is below all {len(tcb_info.tcb_levels)} levels of TCB Info "
        f"(FMSPC {tcb_info.fmspc.hex().upper()}, evaluation data number {tcb_info.tcb_evaluation_data_number})",
        check="tcb_level",
    )


def tdx_module_identity_id(major: int) -> str:
    return f"TDX_{major:02X}"


def check_tdx_module(tcb_info: TcbInfo, td: TdReportBody) -> TdxModuleIdentity | None:
    """QVL 4.1.2.5.12: MRSIGNERSEAM and SEAMATTRIBUTES against the TDX module identity.

    Module major version 0 uses ``tdxModule``; a major version N > 0 uses the
    ``tdxModuleIdentities`` entry ``TDX_<N>`` (returned, for the TCB evaluation).
    """
    major = td.tee_tcb_svn[1]
    identity: TdxModuleIdentity | None = None
    if major > 0:
        wanted = tdx_module_identity_id(major)
        for candidate in tcb_info.tdx_module_identities:
            if candidate.id.upper() == wanted:
                identity = candidate
                break
        else:
            raise VerificationError(
                f"TDX module major version {major}: TCB Info has no module identity {wanted} "
                f"(has {[i.id for i in tcb_info.tdx_module_identities]})",
                check="tdx_module",
            )
        mrsigner, attributes, mask = identity.mrsigner, identity.attributes, identity.attributes_mask
    else:
        if tcb_info.tdx_module is None:
            raise VerificationError("TCB Info has no tdxModule for a TDX quote", check="tdx_module")
        mod = tcb_info.tdx_module
        mrsigner, attributes, mask = mod.mrsigner, mod.attributes, mod.attributes_mask
    if td.mr_signer_seam != mrsigner:
        raise VerificationError(
            f"MRSIGNERSEAM {td.mr_signer_seam.hex()} differs from the TDX module identity's {mrsigner.hex()}",
            check="tdx_module",
        )
    masked = bytes(a & m for a, m in zip(td.seam_attributes, mask, strict=True))
    if masked != attributes:
        raise VerificationError(
            f"SEAMATTRIBUTES {td.seam_attributes.hex()} masked with {mask.hex()} is {masked.hex()}, "
            f"expected {attributes.hex()}",
            check="tdx_module",
        )
    return identity


def match_qe_identity(identity: EnclaveIdentity, qe_report: EnclaveReportBody) -> EnclaveTcbLevel:
    """QVL 4.1.2.5.16 / EnclaveReportVerifier: QE report against the (TD_)QE identity.

    Raises ``VerificationError(check="qe_identity")`` on a mismatch or an ISVSVN below all levels.
    """
    check = "qe_identity"
    if (qe_report.misc_select & identity.miscselect_mask) != identity.miscselect:
        raise VerificationError(
            f"QE MISCSELECT 0x{qe_report.misc_select:08x} masked with 0x{identity.miscselect_mask:08x} "
            f"!= 0x{identity.miscselect:08x}",
            check=check,
        )
    masked = bytes(a & m for a, m in zip(qe_report.attributes, identity.attributes_mask, strict=True))
    if masked != identity.attributes:
        raise VerificationError(
            f"QE ATTRIBUTES {qe_report.attributes.hex()} masked with {identity.attributes_mask.hex()} is "
            f"{masked.hex()}, expected {identity.attributes.hex()}",
            check=check,
        )
    if qe_report.mr_signer != identity.mrsigner:
        raise VerificationError(
            f"QE MRSIGNER {qe_report.mr_signer.hex()} is not {identity.id}'s {identity.mrsigner.hex()}",
            check=check,
        )
    if qe_report.isv_prod_id != identity.isvprodid:
        raise VerificationError(
            f"QE ISVPRODID {qe_report.isv_prod_id} is not {identity.id}'s {identity.isvprodid}", check=check
        )
    for level in identity.tcb_levels:
        if qe_report.isv_svn >= level.isvsvn:
            return level
    raise VerificationError(
        f"QE ISVSVN {qe_report.isv_svn} is below all {identity.id} identity TCB levels "
        f"(lowest {min(lv.isvsvn for lv in identity.tcb_levels)})",
        check=check,
    )


def _dedupe(ids: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


def evaluate_tcb(
    tcb_info: TcbInfo,
    pck_components: tuple[int, ...],
    pcesvn: int,
    qe_level: EnclaveTcbLevel,
    td: TdReportBody | None,
    module_identity: TdxModuleIdentity | None,
) -> TcbEvaluation:
    """QVL ``sgxEvaluateTCB`` / ``tdxEvaluateTCB``. ``td`` and ``module_identity`` only for TDX."""
    tee_tcb_svn = td.tee_tcb_svn if td is not None else None
    platform = match_platform_level(tcb_info, pck_components, pcesvn, tee_tcb_svn)
    components: list[str] = []
    dates = [platform.tcb_date, qe_level.tcb_date]
    module_status: str | None = None
    module_advisories: tuple[str, ...] = ()
    if td is not None and module_identity is not None:
        minor = td.tee_tcb_svn[0]
        for level in module_identity.tcb_levels:
            if minor >= level.isvsvn:
                module_status = level.status
                module_advisories = level.advisory_ids
                dates.append(level.tcb_date)
                break
        else:
            raise VerificationError(
                f"no matching TCB level: TDX module {module_identity.id} SVN {minor} is below all its "
                f"{len(module_identity.tcb_levels)} levels",
                check="tcb_level",
            )
        components.append(module_status)
    components.append(qe_level.status)
    return TcbEvaluation(
        status=converge_status(platform.status, components),
        advisory_ids=_dedupe([*platform.advisory_ids, *qe_level.advisory_ids, *module_advisories]),
        platform_status=platform.status,
        qe_status=qe_level.status,
        module_status=module_status,
        tcb_date=min(dates),
        platform_level=platform,
    )
