"""Build real-format SGX quote v3 and TDX quote v4 signed by a dev PKI. NOT FOR PRODUCTION.

The quotes have exactly the layout Intel's Quoting Enclaves produce ("Intel SGX ECDSA
Quote Library API", appendix "Quote Format" for v3; "Intel TDX DCAP Quoting Library API",
appendix "Quote Format" for v4), with ECDSA-256-with-P-256 attestation keys:

* SGX v3: header | SGX report body | sig data len | ISV sig | AK | QE report | QE report sig
  | QE auth data | certification data type 5 (PCK leaf, CA, root as PEM).
* TDX v4: header | TD report 1.0 | sig data len | quote sig | AK | certification data type 6
  (QE report | QE report sig | QE auth data | certification data type 5 PCK chain).

The simulated QE behaves like Intel's: its report (an SGX report body) carries the dev
QE identity (MRSIGNER, ISVPRODID, ISVSVN from :mod:`keybroker.tee.sim.pki`) and
report_data = SHA-256(AK public key || QE auth data) || 32 zero bytes, and is signed by the
platform's PCK key for the chosen TCB level.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from keybroker.tee.sim.pki import QE_ATTRIBUTES, DevPki, SimPlatform, TcbChoice, signature_raw

__all__ = [
    "DEFAULT_MRENCLAVE",
    "DEFAULT_MRSEAM",
    "DEFAULT_MRSIGNER",
    "DEFAULT_MRSIGNERSEAM",
    "DEFAULT_MRTD",
    "DEFAULT_RTMRS",
    "DEFAULT_SEAMSVN",
    "INTEL_QE_VENDOR_ID",
    "QE_AUTH_DATA",
    "SGX_ATTRIBUTES_DEBUG",
    "TD_ATTRIBUTES_DEBUG",
    "TD_ATTRIBUTES_SEPT_VE_DISABLE",
    "sgx_quote",
    "tdx_quote",
]


def _tag(label: str, size: int) -> bytes:
    """A recognisable measurement: ASCII ``label`` zero-padded to ``size`` bytes."""
    raw = label.encode("ascii")
    return raw + bytes(size - len(raw))


#: Default SGX measurements: ASCII "KB-SIM MRENCLAVE" / "KB-SIM MRSIGNER", zero padded.
DEFAULT_MRENCLAVE: Final = _tag("KB-SIM MRENCLAVE", 32)
DEFAULT_MRSIGNER: Final = _tag("KB-SIM MRSIGNER", 32)
#: Default TDX measurements: ASCII "KB-SIM MRTD", "KB-SIM RTMR0".."KB-SIM RTMR3",
#: "KB-SIM MRSEAM", zero padded to 48 bytes.
DEFAULT_MRTD: Final = _tag("KB-SIM MRTD", 48)
DEFAULT_RTMRS: Final = tuple(_tag(f"KB-SIM RTMR{i}", 48) for i in range(4))
DEFAULT_MRSEAM: Final = _tag("KB-SIM MRSEAM", 48)
#: The TDX module is signed by Intel: MRSIGNERSEAM is all zeros, as the dev TCB Info's
#: ``tdxModule.mrsigner`` says. Another value fails the verifier's TDX module identity check.
DEFAULT_MRSIGNERSEAM: Final = bytes(48)
#: SEAMSVN = TEE_TCB_SVN[1] << 8 | TEE_TCB_SVN[0]: TDX module major version 1, minor SVN 3
#: ("TDX_01" in the dev TCB Info, UpToDate from minor SVN 2).
DEFAULT_SEAMSVN: Final = 0x0103
#: QE authentication data, as Intel's QE fills it: bytes 0x00..0x1f.
QE_AUTH_DATA: Final = bytes(range(32))

# --- layout -----------------------------------------------------------------------------
# Quote header (SGX v3: "Quote Header" table; TDX v4: "Quote Header" table), 48 bytes.
HDR_VERSION: Final = 0  # u16
HDR_ATT_KEY_TYPE: Final = HDR_VERSION + 2  # u16, 2 = ECDSA-256-with-P-256
HDR_TEE_TYPE: Final = HDR_ATT_KEY_TYPE + 2  # u32, 0x00 SGX (v3: reserved 0), 0x81 TDX
HDR_QE_SVN: Final = HDR_TEE_TYPE + 4  # u16 (v4: reserved)
HDR_PCE_SVN: Final = HDR_QE_SVN + 2  # u16 (v4: reserved)
HDR_QE_VENDOR_ID: Final = HDR_PCE_SVN + 2  # 16
HDR_USER_DATA: Final = HDR_QE_VENDOR_ID + 16  # 20: QE ID (16) || zeros (4)
HEADER_SIZE: Final = HDR_USER_DATA + 20  # 48

# SGX report body ("Enclave Report Body" table / SGX REPORT without KEYID/MAC), 384 bytes.
RB_CPUSVN: Final = 0  # 16
RB_MISCSELECT: Final = RB_CPUSVN + 16  # u32
RB_RESERVED1: Final = RB_MISCSELECT + 4  # 12, zero
RB_ISVEXTPRODID: Final = RB_RESERVED1 + 12  # 16
RB_ATTRIBUTES: Final = RB_ISVEXTPRODID + 16  # 16: flags u64 || xfrm u64
RB_MRENCLAVE: Final = RB_ATTRIBUTES + 16  # 32
RB_RESERVED2: Final = RB_MRENCLAVE + 32  # 32, zero
RB_MRSIGNER: Final = RB_RESERVED2 + 32  # 32
RB_RESERVED3: Final = RB_MRSIGNER + 32  # 32, zero
RB_CONFIGID: Final = RB_RESERVED3 + 32  # 64
RB_ISVPRODID: Final = RB_CONFIGID + 64  # u16
RB_ISVSVN: Final = RB_ISVPRODID + 2  # u16
RB_CONFIGSVN: Final = RB_ISVSVN + 2  # u16
RB_RESERVED4: Final = RB_CONFIGSVN + 2  # 42, zero
RB_ISVFAMILYID: Final = RB_RESERVED4 + 42  # 16
RB_REPORTDATA: Final = RB_ISVFAMILYID + 16  # 64
SGX_REPORT_BODY_SIZE: Final = RB_REPORTDATA + 64  # 384

# TD report body 1.0 ("TD Quote Body" table, quote v4), 584 bytes.
TD_TEE_TCB_SVN: Final = 0  # 16
TD_MRSEAM: Final = TD_TEE_TCB_SVN + 16  # 48
TD_MRSIGNERSEAM: Final = TD_MRSEAM + 48  # 48
TD_SEAMATTRIBUTES: Final = TD_MRSIGNERSEAM + 48  # 8
TD_TDATTRIBUTES: Final = TD_SEAMATTRIBUTES + 8  # 8
TD_XFAM: Final = TD_TDATTRIBUTES + 8  # 8
TD_MRTD: Final = TD_XFAM + 8  # 48
TD_MRCONFIGID: Final = TD_MRTD + 48  # 48
TD_MROWNER: Final = TD_MRCONFIGID + 48  # 48
TD_MROWNERCONFIG: Final = TD_MROWNER + 48  # 48
TD_RTMR0: Final = TD_MROWNERCONFIG + 48  # 48 x 4
TD_REPORTDATA: Final = TD_RTMR0 + 4 * 48  # 64
TD_REPORT10_SIZE: Final = TD_REPORTDATA + 64  # 584

# ECDSA signature data. SGX v3 ("Quote Signature Data" / "ECDSA 256-bit Quote Signature
# Data Structure"): sig 64 | AK 64 | QE report 384 | QE report sig 64 | auth data len u16 |
# auth data | cert data type u16 | cert data len u32 | cert data.
# TDX v4 ("ECDSA 256-bit Quote Signature Data Structure - Version 4"): sig 64 | AK 64 |
# cert data type 6 u16 | len u32 | [QE report 384 | QE report sig 64 | auth data len u16 |
# auth data | cert data type 5 u16 | len u32 | PEM chain].
SIG_SIZE: Final = 64
AK_SIZE: Final = 64
CERT_TYPE_PCK_CHAIN: Final = 5
CERT_TYPE_QE_REPORT: Final = 6

QUOTE_VERSION_SGX: Final = 3
QUOTE_VERSION_TDX: Final = 4
ATT_KEY_TYPE_ECDSA_P256: Final = 2
TEE_TYPE_SGX: Final = 0x00000000
TEE_TYPE_TDX: Final = 0x00000081
#: Intel's QE vendor ID (939A7233-F79C-4CA9-940A-0DB3957F0607), as real quotes carry it.
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939A7233F79C4CA9940A0DB3957F0607")

# SGX ATTRIBUTES.FLAGS bits (SDM vol. 3D, SECS.ATTRIBUTES).
SGX_ATTRIBUTES_INIT: Final = 1 << 0
SGX_ATTRIBUTES_DEBUG: Final = 1 << 1
SGX_ATTRIBUTES_MODE64BIT: Final = 1 << 2
_SGX_XFRM: Final = 0xE7  # x87, SSE, AVX, AVX-512 state, as on real quotes
# TD ATTRIBUTES bits (TDX module ABI, TDCS.ATTRIBUTES).
TD_ATTRIBUTES_DEBUG: Final = 1 << 0
TD_ATTRIBUTES_SEPT_VE_DISABLE: Final = 1 << 28
_TD_XFAM: Final = 0x00000000000602E7  # as on real quotes (FP, SSE, AVX, AVX-512, PK, ...)


def _check_len(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name} must be exactly {size} bytes, got {len(value)}")
    return value


def _check_u16(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be in 0..65535, got {value}")
    return value


def _ak_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    n = key.public_key().public_numbers()
    return n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")


def _header(
    *, version: int, tee_type: int, qe_svn: int, pce_svn: int, qe_id: bytes, qe_vendor_id: bytes
) -> bytes:
    out = struct.pack("<HHIHH", version, ATT_KEY_TYPE_ECDSA_P256, tee_type, qe_svn, pce_svn)
    out += _check_len("QE vendor ID", qe_vendor_id, 16) + qe_id + bytes(4)
    return out


def sgx_report_body(
    *,
    cpusvn: bytes,
    attributes: bytes,
    mrenclave: bytes,
    mrsigner: bytes,
    isvprodid: int,
    isvsvn: int,
    report_data: bytes,
    miscselect: int = 0,
) -> bytes:
    """An SGX report body (384 bytes): reserved, ISVEXTPRODID, CONFIGID, ISVFAMILYID zero."""
    body = bytearray(SGX_REPORT_BODY_SIZE)
    body[RB_CPUSVN:RB_MISCSELECT] = _check_len("CPUSVN", cpusvn, 16)
    struct.pack_into("<I", body, RB_MISCSELECT, miscselect)
    body[RB_ATTRIBUTES:RB_MRENCLAVE] = _check_len("ATTRIBUTES", attributes, 16)
    body[RB_MRENCLAVE:RB_RESERVED2] = _check_len("MRENCLAVE", mrenclave, 32)
    body[RB_MRSIGNER:RB_RESERVED3] = _check_len("MRSIGNER", mrsigner, 32)
    struct.pack_into(
        "<HH", body, RB_ISVPRODID, _check_u16("ISVPRODID", isvprodid), _check_u16("ISVSVN", isvsvn)
    )
    body[RB_REPORTDATA:SGX_REPORT_BODY_SIZE] = _check_len("report data", report_data, 64)
    return bytes(body)


def _qe_report(platform: SimPlatform, tcb: TcbChoice) -> tuple[bytes, bytes]:
    """The QE report over the AK and auth data, and its signature by the PCK key."""
    level = platform.tcb_level(tcb)
    qe = platform.qe
    qe_hash = hashlib.sha256(_ak_public(platform.attestation_key) + QE_AUTH_DATA).digest()
    report = sgx_report_body(
        cpusvn=level.cpusvn,
        attributes=QE_ATTRIBUTES,
        mrenclave=qe.mrenclave,
        mrsigner=qe.mrsigner,
        isvprodid=qe.isvprodid,
        isvsvn=qe.isvsvn,
        report_data=qe_hash + bytes(32),
    )
    return report, signature_raw(platform.pck[tcb].key, report)


def _cert_data(cert_type: int, data: bytes) -> bytes:
    return struct.pack("<HI", cert_type, len(data)) + data


def _auth_data(data: bytes) -> bytes:
    return struct.pack("<H", len(data)) + data


def sgx_quote(
    pki: DevPki,
    *,
    report_data: bytes,
    mrenclave: bytes = DEFAULT_MRENCLAVE,
    mrsigner: bytes = DEFAULT_MRSIGNER,
    isvprodid: int = 0,
    isvsvn: int = 0,
    debug: bool = False,
    tcb: TcbChoice = "uptodate",
    platform: str = "sgx",
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID,
) -> bytes:
    """An SGX ECDSA quote v3 from the simulated platform ``platform`` at TCB level ``tcb``.

    ``report_data`` must be exactly 64 bytes (no silent padding). ATTRIBUTES are INIT |
    MODE64BIT (| DEBUG when ``debug``), XFRM 0xE7; MISCSELECT, CONFIGID, ISVEXTPRODID,
    ISVFAMILYID are zero; CPUSVN is the platform's for ``tcb``. The PCK chain is
    certification data type 5 (the v3 layout carries the QE report itself). The header carries
    Intel's QE vendor ID, as real quotes do (another ``qe_vendor_id`` is for negative tests).
    """
    p = pki.platform(platform)
    if p.tee != "sgx":
        raise ValueError(f"platform {platform!r} is a {p.tee.upper()} platform, not SGX")
    level = p.tcb_level(tcb)
    flags = SGX_ATTRIBUTES_INIT | SGX_ATTRIBUTES_MODE64BIT | (SGX_ATTRIBUTES_DEBUG if debug else 0)
    header = _header(
        version=QUOTE_VERSION_SGX,
        tee_type=TEE_TYPE_SGX,
        qe_svn=p.qe.isvsvn,
        pce_svn=level.pcesvn,
        qe_id=p.qe_id,
        qe_vendor_id=qe_vendor_id,
    )
    body = sgx_report_body(
        cpusvn=level.cpusvn,
        attributes=struct.pack("<QQ", flags, _SGX_XFRM),
        mrenclave=mrenclave,
        mrsigner=mrsigner,
        isvprodid=isvprodid,
        isvsvn=isvsvn,
        report_data=report_data,
    )
    qe_report, qe_report_sig = _qe_report(p, tcb)
    signed = header + body
    sig_data = (
        signature_raw(p.attestation_key, signed)
        + _ak_public(p.attestation_key)
        + qe_report
        + qe_report_sig
        + _auth_data(QE_AUTH_DATA)
        + _cert_data(CERT_TYPE_PCK_CHAIN, pki.pck_chain_pem(p, tcb))
    )
    return signed + struct.pack("<I", len(sig_data)) + sig_data


def td_report10_body(
    *,
    tee_tcb_svn: bytes,
    mrseam: bytes,
    mrsignerseam: bytes,
    td_attributes: int,
    mrtd: bytes,
    rtmrs: tuple[bytes, bytes, bytes, bytes],
    report_data: bytes,
    xfam: int = _TD_XFAM,
    seam_attributes: int = 0,
) -> bytes:
    """A TD report 1.0 quote body (584 bytes): MRCONFIGID, MROWNER, MROWNERCONFIG zero."""
    body = bytearray(TD_REPORT10_SIZE)
    body[TD_TEE_TCB_SVN:TD_MRSEAM] = _check_len("TEE_TCB_SVN", tee_tcb_svn, 16)
    body[TD_MRSEAM:TD_MRSIGNERSEAM] = _check_len("MRSEAM", mrseam, 48)
    body[TD_MRSIGNERSEAM:TD_SEAMATTRIBUTES] = _check_len("MRSIGNERSEAM", mrsignerseam, 48)
    struct.pack_into("<QQQ", body, TD_SEAMATTRIBUTES, seam_attributes, td_attributes, xfam)
    body[TD_MRTD:TD_MRCONFIGID] = _check_len("MRTD", mrtd, 48)
    for i, rtmr in enumerate(rtmrs):
        start = TD_RTMR0 + 48 * i
        body[start : start + 48] = _check_len(f"RTMR{i}", rtmr, 48)
    body[TD_REPORTDATA:TD_REPORT10_SIZE] = _check_len("report data", report_data, 64)
    return bytes(body)


def tdx_quote(
    pki: DevPki,
    *,
    report_data: bytes,
    mrtd: bytes = DEFAULT_MRTD,
    rtmr0: bytes = DEFAULT_RTMRS[0],
    rtmr1: bytes = DEFAULT_RTMRS[1],
    rtmr2: bytes = DEFAULT_RTMRS[2],
    rtmr3: bytes = DEFAULT_RTMRS[3],
    mrseam: bytes = DEFAULT_MRSEAM,
    mrsignerseam: bytes = DEFAULT_MRSIGNERSEAM,
    seamsvn: int = DEFAULT_SEAMSVN,
    debug: bool = False,
    sept_ve_disable: bool = True,
    tcb: TcbChoice = "uptodate",
    platform: str = "tdx",
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID,
    extra_td_attributes: int = 0,
) -> bytes:
    """A TDX ECDSA quote v4 (TD report 1.0) from simulated platform ``platform`` at ``tcb``.

    ``report_data`` must be exactly 64 bytes. TEE_TCB_SVN = SEAMSVN (little-endian u16:
    minor SVN, major version) || the dev TCB level's TDX components 2..15. TD ATTRIBUTES:
    DEBUG (bit 0) if ``debug``, SEPT_VE_DISABLE (bit 28) if ``sept_ve_disable``; XFAM
    0x602E7; SEAM attributes, MRCONFIGID, MROWNER, MROWNERCONFIG zero. Header QE/PCE SVN
    fields are zero (reserved in v4); its QE vendor ID is Intel's unless ``qe_vendor_id`` says
    otherwise. ``extra_td_attributes`` are ORed into TD ATTRIBUTES (reserved bits, for tests).
    """
    p = pki.platform(platform)
    if p.tee != "tdx":
        raise ValueError(f"platform {platform!r} is a {p.tee.upper()} platform, not TDX")
    level = p.tcb_level(tcb)
    if level.tdx_components is None:
        raise ValueError(f"TCB level {tcb!r} of platform {platform!r} has no TDX components")
    tee_tcb_svn = struct.pack("<H", _check_u16("SEAMSVN", seamsvn)) + level.tdx_components[2:]
    if not 0 <= extra_td_attributes < 1 << 64:
        raise ValueError(f"extra_td_attributes must fit in 64 bits, got {extra_td_attributes:#x}")
    attributes = (
        (TD_ATTRIBUTES_DEBUG if debug else 0)
        | (TD_ATTRIBUTES_SEPT_VE_DISABLE if sept_ve_disable else 0)
        | extra_td_attributes
    )
    header = _header(
        version=QUOTE_VERSION_TDX,
        tee_type=TEE_TYPE_TDX,
        qe_svn=0,
        pce_svn=0,
        qe_id=p.qe_id,
        qe_vendor_id=qe_vendor_id,
    )
    body = td_report10_body(
        tee_tcb_svn=tee_tcb_svn,
        mrseam=mrseam,
        mrsignerseam=mrsignerseam,
        td_attributes=attributes,
        mrtd=mrtd,
        rtmrs=(rtmr0, rtmr1, rtmr2, rtmr3),
        report_data=report_data,
    )
    qe_report, qe_report_sig = _qe_report(p, tcb)
    qe_cert_data = (
        qe_report
        + qe_report_sig
        + _auth_data(QE_AUTH_DATA)
        + _cert_data(CERT_TYPE_PCK_CHAIN, pki.pck_chain_pem(p, tcb))
    )
    signed = header + body
    sig_data = (
        signature_raw(p.attestation_key, signed)
        + _ak_public(p.attestation_key)
        + _cert_data(CERT_TYPE_QE_REPORT, qe_cert_data)
    )
    return signed + struct.pack("<I", len(sig_data)) + sig_data
