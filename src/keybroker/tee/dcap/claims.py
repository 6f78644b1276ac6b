"""Claims of a verified quote: the measured identity of the enclave or TD, decoded.

Claims describe; they do not judge. A debug enclave or TD, ``SEPT_VE_DISABLE`` = 0 or a non-zero
MRSERVICETD are valid claims that policy (``keybroker.appraisal``) may reject.

Bit positions: SGX ``ATTRIBUTES.FLAGS`` from the Intel SDM Vol. 3D, 38.7.1 "ATTRIBUTES"; TD
``ATTRIBUTES`` from the Intel TDX Module ABI specification, "TDX ATTRIBUTES" (TUD bits 7:0,
SEC bits 31:8, OTHER bits 63:32), with the bits later modules define as Linux names them
(``arch/x86/include/asm/shared/tdx.h``, ``TDX_ATTR_*``). Every other TD attribute bit is reserved:
a TDX module sets one only for a feature this code does not know, so it is exposed as the claim
``td_attributes.reserved`` (the reserved bits that are set), which the default policies deny.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from keybroker.tee.dcap.abi import EnclaveReportBody, Quote, TdReportBody

__all__ = [
    "TD_ATTRIBUTES_RESERVED",
    "SgxAttributes",
    "SgxClaims",
    "TdAttributes",
    "TdxClaims",
    "claims_from_quote",
]

# SDM 38.7.1 ATTRIBUTES.FLAGS
_SGX_INIT: Final = 1 << 0
_SGX_DEBUG: Final = 1 << 1
_SGX_MODE64BIT: Final = 1 << 2
_SGX_PROVISIONKEY: Final = 1 << 4
_SGX_EINITTOKEN_KEY: Final = 1 << 5
_SGX_CET: Final = 1 << 6
_SGX_KSS: Final = 1 << 7
_SGX_AEXNOTIFY: Final = 1 << 10

# TDX module ABI, TD ATTRIBUTES (Linux TDX_ATTR_*)
_TD_DEBUG: Final = 1 << 0
_TD_HGS_PLUS_PROF: Final = 1 << 4
_TD_PERF_PROF: Final = 1 << 5
_TD_PMT_PROF: Final = 1 << 6
_TD_ICSSD: Final = 1 << 16
_TD_LASS: Final = 1 << 27
_TD_SEPT_VE_DISABLE: Final = 1 << 28
_TD_MIGRATABLE: Final = 1 << 29
_TD_PKS: Final = 1 << 30
_TD_KL: Final = 1 << 31
_TD_TPA: Final = 1 << 62
_TD_PERFMON: Final = 1 << 63
_TD_DEFINED: Final = (
    _TD_DEBUG
    | _TD_HGS_PLUS_PROF
    | _TD_PERF_PROF
    | _TD_PMT_PROF
    | _TD_ICSSD
    | _TD_LASS
    | _TD_SEPT_VE_DISABLE
    | _TD_MIGRATABLE
    | _TD_PKS
    | _TD_KL
    | _TD_TPA
    | _TD_PERFMON
)
#: The TD attribute bits no TDX module defines (yet).
TD_ATTRIBUTES_RESERVED: Final = ~_TD_DEFINED & 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class SgxAttributes:
    """SGX enclave ATTRIBUTES: FLAGS decoded, XFRM as an integer."""

    flags: int
    xfrm: int

    @property
    def debug(self) -> bool:
        return bool(self.flags & _SGX_DEBUG)

    def to_dict(self) -> dict[str, Any]:
        f = self.flags
        return {
            "flags": f"{f:016x}",
            "xfrm": f"{self.xfrm:016x}",
            "init": bool(f & _SGX_INIT),
            "debug": bool(f & _SGX_DEBUG),
            "mode64bit": bool(f & _SGX_MODE64BIT),
            "provision_key": bool(f & _SGX_PROVISIONKEY),
            "einittoken_key": bool(f & _SGX_EINITTOKEN_KEY),
            "cet": bool(f & _SGX_CET),
            "kss": bool(f & _SGX_KSS),
            "aex_notify": bool(f & _SGX_AEXNOTIFY),
        }


@dataclass(frozen=True, slots=True)
class TdAttributes:
    """TD ATTRIBUTES (64-bit, little-endian in the report), decoded."""

    value: int

    @property
    def debug(self) -> bool:
        return bool(self.value & _TD_DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.value & _TD_SEPT_VE_DISABLE)

    @property
    def reserved(self) -> int:
        """The reserved bits that are set (0 on every TD a known TDX module builds)."""
        return self.value & TD_ATTRIBUTES_RESERVED

    def to_dict(self) -> dict[str, Any]:
        v = self.value
        return {
            "value": f"{v:016x}",
            "debug": bool(v & _TD_DEBUG),
            "hgs_plus_prof": bool(v & _TD_HGS_PLUS_PROF),
            "perf_prof": bool(v & _TD_PERF_PROF),
            "pmt_prof": bool(v & _TD_PMT_PROF),
            "icssd": bool(v & _TD_ICSSD),
            "lass": bool(v & _TD_LASS),
            "sept_ve_disable": bool(v & _TD_SEPT_VE_DISABLE),
            "migratable": bool(v & _TD_MIGRATABLE),
            "pks": bool(v & _TD_PKS),
            "key_locker": bool(v & _TD_KL),
            "tpa": bool(v & _TD_TPA),
            "perfmon": bool(v & _TD_PERFMON),
            "reserved": f"{self.reserved:016x}",
        }


@dataclass(frozen=True, slots=True)
class SgxClaims:
    """Claims of an SGX enclave (quote v3 ISV enclave report)."""

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    attributes: SgxAttributes
    misc_select: int
    cpu_svn: bytes
    report_data: bytes
    config_id: bytes
    config_svn: int
    isv_ext_prod_id: bytes
    isv_family_id: bytes
    tee: Literal["sgx"] = "sgx"

    @property
    def debug(self) -> bool:
        return self.attributes.debug

    def to_dict(self) -> dict[str, Any]:
        return {
            "tee": self.tee,
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
            "attributes": self.attributes.to_dict(),
            "misc_select": f"{self.misc_select:08x}",
            "cpu_svn": self.cpu_svn.hex(),
            "report_data": self.report_data.hex(),
            "config_id": self.config_id.hex(),
            "config_svn": self.config_svn,
            "isv_ext_prod_id": self.isv_ext_prod_id.hex(),
            "isv_family_id": self.isv_family_id.hex(),
        }


@dataclass(frozen=True, slots=True)
class TdxClaims:
    """Claims of a TD (quote v4/v5 TD report 1.0, 1.5 or 1.5ex). ``None``: not in this body version."""

    td_report_version: str
    mr_td: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_svn: int
    tee_tcb_svn: bytes
    seam_attributes: bytes
    td_attributes: TdAttributes
    xfam: int
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mr_service_td: bytes | None
    td_id: bytes | None
    tee: Literal["tdx"] = "tdx"

    @property
    def debug(self) -> bool:
        return self.td_attributes.debug

    @property
    def sept_ve_disable(self) -> bool:
        return self.td_attributes.sept_ve_disable

    def to_dict(self) -> dict[str, Any]:
        def opt(b: bytes | None) -> str | None:
            return None if b is None else b.hex()

        return {
            "tee": self.tee,
            "td_report_version": self.td_report_version,
            "mr_td": self.mr_td.hex(),
            "rtmr0": self.rtmr[0].hex(),
            "rtmr1": self.rtmr[1].hex(),
            "rtmr2": self.rtmr[2].hex(),
            "rtmr3": self.rtmr[3].hex(),
            "mr_seam": self.mr_seam.hex(),
            "mr_signer_seam": self.mr_signer_seam.hex(),
            "seam_svn": self.seam_svn,
            "tee_tcb_svn": self.tee_tcb_svn.hex(),
            "seam_attributes": self.seam_attributes.hex(),
            "debug": self.debug,
            "sept_ve_disable": self.sept_ve_disable,
            "td_attributes": self.td_attributes.to_dict(),
            "xfam": f"{self.xfam:016x}",
            "mr_config_id": self.mr_config_id.hex(),
            "mr_owner": self.mr_owner.hex(),
            "mr_owner_config": self.mr_owner_config.hex(),
            "mr_service_td": opt(self.mr_service_td),
            "tee_tcb_svn2": opt(self.tee_tcb_svn2),
            "td_id": opt(self.td_id),
            "report_data": self.report_data.hex(),
        }


def _sgx(body: EnclaveReportBody) -> SgxClaims:
    return SgxClaims(
        mr_enclave=body.mr_enclave,
        mr_signer=body.mr_signer,
        isv_prod_id=body.isv_prod_id,
        isv_svn=body.isv_svn,
        attributes=SgxAttributes(
            flags=int.from_bytes(body.attributes[:8], "little"),
            xfrm=int.from_bytes(body.attributes[8:], "little"),
        ),
        misc_select=body.misc_select,
        cpu_svn=body.cpu_svn,
        report_data=body.report_data,
        config_id=body.config_id,
        config_svn=body.config_svn,
        isv_ext_prod_id=body.isv_ext_prod_id,
        isv_family_id=body.isv_family_id,
    )


def _tdx(body: TdReportBody) -> TdxClaims:
    return TdxClaims(
        td_report_version=body.version_name,
        mr_td=body.mr_td,
        rtmr=body.rtmr,
        mr_seam=body.mr_seam,
        mr_signer_seam=body.mr_signer_seam,
        # TEE_TCB_SVN[0] is the module's minor SVN, [1] its major version: SEAMSVN, little-endian.
        seam_svn=int.from_bytes(body.tee_tcb_svn[:2], "little"),
        tee_tcb_svn=body.tee_tcb_svn,
        seam_attributes=body.seam_attributes,
        td_attributes=TdAttributes(int.from_bytes(body.td_attributes, "little")),
        xfam=int.from_bytes(body.xfam, "little"),
        mr_config_id=body.mr_config_id,
        mr_owner=body.mr_owner,
        mr_owner_config=body.mr_owner_config,
        report_data=body.report_data,
        tee_tcb_svn2=body.tee_tcb_svn2,
        mr_service_td=body.mr_service_td,
        td_id=body.ext.td_id if body.ext is not None else None,
    )


def claims_from_quote(quote: Quote) -> SgxClaims | TdxClaims:
    """Claims of a quote's body (call only on a verified quote)."""
    body = quote.body
    if isinstance(body, TdReportBody):
        return _tdx(body)
    return _sgx(body)
