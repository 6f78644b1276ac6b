"""Intel DCAP quote layout: raw bytes to frozen, typed structures. No crypto, no policy.

Sources (all little-endian, packed):

* [QL3] Intel SGX ECDSA Quote Library API (DCAP), Appendix A "ECDSA Quote Format" (quote v3:
  header, ISV enclave report body, quote signature data, QE certification data).
* [QL4] Intel TDX DCAP Quoting Library API, Appendix A "Quote Format" (quote v4: header with TEE
  type, TD quote body, certification data type 6 "QE report certification data") and the v5
  additions (body descriptor: type + size; body types 1 SGX, 2 TD 1.0, 3 TD 1.5), with body type 4
  "TD 1.5ex" (``sgx_report2_body_v1_5_ex_t`` in Intel's ``sgx_quote_5.h``).
* [SDK] ``sgx_report_body_t`` (``sgx_report.h``) for the KSS fields inside the SGX report body.

Every structure is length-checked before any field is read, reserved ranges must be zero, bytes
after the quote (configfs pads it) must be zero too, and an error names the field and its absolute
offset in the quote. The parse says nothing about
authenticity: callers hold the result as ``unverified_quote`` until ``verify.verify_quote``
has checked it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal

from keybroker.errors import EvidenceParseError

__all__ = [
    "ATTESTATION_KEY_TYPE_ECDSA_P256",
    "BODY_TYPE_SGX",
    "BODY_TYPE_TD10",
    "BODY_TYPE_TD15",
    "BODY_TYPE_TD15EX",
    "CERT_TYPE_PCK_CHAIN",
    "CERT_TYPE_QE_REPORT",
    "INTEL_QE_VENDOR_ID",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "CertificationData",
    "EnclaveReportBody",
    "Quote",
    "QuoteHeader",
    "QuoteSignatureData",
    "TdReportBody",
    "TdReport15Ex",
    "canonical_quote",
    "parse_enclave_report_body",
    "parse_quote",
]

#: Largest quote accepted: real quotes are ~5 KiB; configfs buffers pad to 8 KiB.
MAX_QUOTE_SIZE: Final = 64 * 1024

TEE_TYPE_SGX: Final = 0x00000000
TEE_TYPE_TDX: Final = 0x00000081
ATTESTATION_KEY_TYPE_ECDSA_P256: Final = 2
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# [QL4] v5 body descriptor "Type".
BODY_TYPE_SGX: Final = 1
BODY_TYPE_TD10: Final = 2
BODY_TYPE_TD15: Final = 3
BODY_TYPE_TD15EX: Final = 4

# [QL3] Table "Certification Data Type": 1-3 PPID encrypted, 4 PCK leaf, 5 PCK chain (PEM),
# 6 QE report certification data ([QL4] v4+), 7 platform manifest.
CERT_TYPE_PCK_CHAIN: Final = 5
CERT_TYPE_QE_REPORT: Final = 6

# --- [QL3] Table 3 / [QL4] A.3.1 "Quote Header" (48 bytes) --------------------------------------
HDR_VERSION_START: Final = 0
HDR_VERSION_END: Final = HDR_VERSION_START + 2
HDR_AK_TYPE_END: Final = HDR_VERSION_END + 2
HDR_TEE_TYPE_END: Final = HDR_AK_TYPE_END + 4  # v3: "Reserved" (0 == SGX)
HDR_QE_SVN_END: Final = HDR_TEE_TYPE_END + 2  # v4/v5: "Reserved"
HDR_PCE_SVN_END: Final = HDR_QE_SVN_END + 2  # v4/v5: "Reserved"
HDR_QE_VENDOR_ID_END: Final = HDR_PCE_SVN_END + 16
HDR_USER_DATA_END: Final = HDR_QE_VENDOR_ID_END + 20
HEADER_SIZE: Final = HDR_USER_DATA_END  # 48

# --- [QL3] Table 5 "Enclave Report Body" + [SDK] sgx_report_body_t (384 bytes) --------------------
RB_CPUSVN_START: Final = 0
RB_CPUSVN_END: Final = RB_CPUSVN_START + 16
RB_MISCSELECT_END: Final = RB_CPUSVN_END + 4
RB_RESERVED1_END: Final = RB_MISCSELECT_END + 12
RB_ISVEXTPRODID_END: Final = RB_RESERVED1_END + 16
RB_ATTRIBUTES_END: Final = RB_ISVEXTPRODID_END + 16
RB_MRENCLAVE_END: Final = RB_ATTRIBUTES_END + 32
RB_RESERVED2_END: Final = RB_MRENCLAVE_END + 32
RB_MRSIGNER_END: Final = RB_RESERVED2_END + 32
RB_RESERVED3_END: Final = RB_MRSIGNER_END + 32
RB_CONFIGID_END: Final = RB_RESERVED3_END + 64
RB_ISVPRODID_END: Final = RB_CONFIGID_END + 2
RB_ISVSVN_END: Final = RB_ISVPRODID_END + 2
RB_CONFIGSVN_END: Final = RB_ISVSVN_END + 2
RB_RESERVED4_END: Final = RB_CONFIGSVN_END + 42
RB_ISVFAMILYID_END: Final = RB_RESERVED4_END + 16
RB_REPORTDATA_END: Final = RB_ISVFAMILYID_END + 64
ENCLAVE_REPORT_SIZE: Final = RB_REPORTDATA_END  # 384

_RB_RESERVED: Final = (
    ("reserved1", RB_MISCSELECT_END, RB_RESERVED1_END),
    ("reserved2", RB_MRENCLAVE_END, RB_RESERVED2_END),
    ("reserved3", RB_MRSIGNER_END, RB_RESERVED3_END),
    ("reserved4", RB_CONFIGSVN_END, RB_RESERVED4_END),
)

# --- [QL4] A.3.2 "TD Quote Body" (TD report 1.0, 584 bytes) ---------------------------------------
TD_TEE_TCB_SVN_START: Final = 0
TD_TEE_TCB_SVN_END: Final = TD_TEE_TCB_SVN_START + 16
TD_MRSEAM_END: Final = TD_TEE_TCB_SVN_END + 48
TD_MRSIGNERSEAM_END: Final = TD_MRSEAM_END + 48
TD_SEAMATTRIBUTES_END: Final = TD_MRSIGNERSEAM_END + 8
TD_TDATTRIBUTES_END: Final = TD_SEAMATTRIBUTES_END + 8
TD_XFAM_END: Final = TD_TDATTRIBUTES_END + 8
TD_MRTD_END: Final = TD_XFAM_END + 48
TD_MRCONFIGID_END: Final = TD_MRTD_END + 48
TD_MROWNER_END: Final = TD_MRCONFIGID_END + 48
TD_MROWNERCONFIG_END: Final = TD_MROWNER_END + 48
TD_RTMR0_END: Final = TD_MROWNERCONFIG_END + 48
TD_RTMR1_END: Final = TD_RTMR0_END + 48
TD_RTMR2_END: Final = TD_RTMR1_END + 48
TD_RTMR3_END: Final = TD_RTMR2_END + 48
TD_REPORTDATA_END: Final = TD_RTMR3_END + 64
TD10_SIZE: Final = TD_REPORTDATA_END  # 584
# [QL4] v5 "TD Quote Body Descriptor" TD 1.5 additions (648 bytes).
TD_TEE_TCB_SVN2_END: Final = TD10_SIZE + 16
TD_MRSERVICETD_END: Final = TD_TEE_TCB_SVN2_END + 48
TD15_SIZE: Final = TD_MRSERVICETD_END  # 648
# sgx_report2_body_v1_5_ex_t additions (885 bytes).
TDX_VMID_END: Final = TD15_SIZE + 1
TDX_TDID_END: Final = TDX_VMID_END + 32
TDX_DEVINFO_END: Final = TDX_TDID_END + 48
TDX_INIT_SERVTD_HASH_END: Final = TDX_DEVINFO_END + 48
TDX_INIT_SERVTD_ATTR_END: Final = TDX_INIT_SERVTD_HASH_END + 8
TDX_INIT_CPUSVN_END: Final = TDX_INIT_SERVTD_ATTR_END + 16
TDX_INIT_TEE_TCB_SVN_END: Final = TDX_INIT_CPUSVN_END + 16
TDX_INIT_TEE_FMSPC_END: Final = TDX_INIT_TEE_TCB_SVN_END + 12
TDX_CUR_SERVTD_HASH_END: Final = TDX_INIT_TEE_FMSPC_END + 48
TDX_CUR_SERVTD_ATTR_END: Final = TDX_CUR_SERVTD_HASH_END + 8
TD15EX_SIZE: Final = TDX_CUR_SERVTD_ATTR_END  # 885

_BODY_SIZES: Final = {
    BODY_TYPE_SGX: ENCLAVE_REPORT_SIZE,
    BODY_TYPE_TD10: TD10_SIZE,
    BODY_TYPE_TD15: TD15_SIZE,
    BODY_TYPE_TD15EX: TD15EX_SIZE,
}

# --- [QL3] Table 4 "ECDSA 256-bit Quote Signature Data Structure" / [QL4] A.4 -------------------
SIG_DATA_LEN_SIZE: Final = 4
SD_QUOTE_SIG_START: Final = 0
SD_QUOTE_SIG_END: Final = SD_QUOTE_SIG_START + 64
SD_ATTEST_KEY_END: Final = SD_QUOTE_SIG_END + 64
# v3 continues with QE report, QE report signature, QE auth data, certification data; v4/v5
# continue with certification data type 6 whose body is [QL4] A.4.2 "QE Report Certification Data".
QE_REPORT_SIG_SIZE: Final = 64
AUTH_DATA_LEN_SIZE: Final = 2
CERT_DATA_HEADER_SIZE: Final = 6  # type (u16) + size (u32)
#: Upper bound on the nested structures (same order as the quote limit).
_MAX_NESTED: Final = MAX_QUOTE_SIZE

TeeName = Literal["sgx", "tdx"]


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """[QL3] Table 3 / [QL4] A.3.1. ``qe_svn``/``pce_svn`` are "Reserved" in v4/v5 headers."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @property
    def tee(self) -> TeeName:
        return "tdx" if self.tee_type == TEE_TYPE_TDX else "sgx"


@dataclass(frozen=True, slots=True)
class EnclaveReportBody:
    """SGX REPORT body ([QL3] Table 5): the ISV enclave report and the QE report."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes


@dataclass(frozen=True, slots=True)
class TdReport15Ex:
    """The TD 1.5ex additions (``sgx_report2_body_v1_5_ex_t``, body type 4)."""

    vm_id: int
    td_id: bytes
    dev_info: bytes
    init_service_td_hash: bytes
    init_service_td_attributes: bytes
    init_cpu_svn: bytes
    init_tee_tcb_svn: bytes
    init_tee_fmspc: bytes
    cur_service_td_hash: bytes
    cur_service_td_attributes: bytes


@dataclass(frozen=True, slots=True)
class TdReportBody:
    """TD quote body ([QL4] A.3.2); TD 1.5 fields are ``None`` for a TD 1.0 body."""

    body_type: int
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mr_service_td: bytes | None
    ext: TdReport15Ex | None

    @property
    def version_name(self) -> str:
        return {BODY_TYPE_TD10: "1.0", BODY_TYPE_TD15: "1.5", BODY_TYPE_TD15EX: "1.5ex"}[self.body_type]


@dataclass(frozen=True, slots=True)
class CertificationData:
    """A certification data element: ``type`` and its ``data`` (offset is absolute in the quote)."""

    cert_type: int
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class QuoteSignatureData:
    """The ECDSA-P256 signature data, flattened over v3 and v4/v5 nesting.

    ``pck_chain`` is the certification data of type 5 (PEM chain, leaf first) when present.
    """

    quote_signature: bytes
    attestation_key: bytes
    qe_report: EnclaveReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification: CertificationData

    @property
    def pck_chain_pem(self) -> bytes | None:
        if self.certification.cert_type == CERT_TYPE_PCK_CHAIN:
            return self.certification.data
        return None


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed, **unverified** quote. ``signed_data`` is what the attestation key signs."""

    header: QuoteHeader
    body: EnclaveReportBody | TdReportBody
    body_type: int
    signed_data: bytes
    signature: QuoteSignatureData
    #: Zero bytes after the signature data (configfs pads quotes); unsigned, must be zero.
    trailing_size: int
    #: The quote without its zero padding: the one encoding of this quote (its digest identifies it).
    canonical: bytes

    @property
    def tee(self) -> TeeName:
        return self.header.tee

    @property
    def report_data(self) -> bytes:
        return self.body.report_data


def _u16(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<H", raw, offset)[0]
    return value


def _u32(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", raw, offset)[0]
    return value


def _need(raw: bytes, start: int, size: int, field: str, base: int) -> None:
    if start + size > len(raw):
        raise EvidenceParseError(
            f"{field}: need {size} bytes at offset {base + start}, only {max(0, len(raw) - start)} left",
            field=field,
            offset=base + start,
        )


def _zero(raw: bytes, start: int, end: int, field: str, base: int) -> None:
    chunk = raw[start:end]
    if chunk.count(0) != len(chunk):
        first = next(i for i, b in enumerate(chunk) if b)
        raise EvidenceParseError(
            f"{field} must be zero, found {chunk.hex()}", field=field, offset=base + start + first
        )


def parse_enclave_report_body(raw: bytes, *, base: int = 0, name: str = "report") -> EnclaveReportBody:
    """Parse a 384-byte SGX report body; ``base`` is its offset in the quote (for errors)."""
    if len(raw) != ENCLAVE_REPORT_SIZE:
        raise EvidenceParseError(
            f"{name}: expected {ENCLAVE_REPORT_SIZE} bytes, got {len(raw)}", field=name, offset=base
        )
    for field, start, end in _RB_RESERVED:
        _zero(raw, start, end, f"{name}.{field}", base)
    return EnclaveReportBody(
        raw=raw,
        cpu_svn=raw[RB_CPUSVN_START:RB_CPUSVN_END],
        misc_select=_u32(raw, RB_CPUSVN_END),
        isv_ext_prod_id=raw[RB_RESERVED1_END:RB_ISVEXTPRODID_END],
        attributes=raw[RB_ISVEXTPRODID_END:RB_ATTRIBUTES_END],
        mr_enclave=raw[RB_ATTRIBUTES_END:RB_MRENCLAVE_END],
        mr_signer=raw[RB_RESERVED2_END:RB_MRSIGNER_END],
        config_id=raw[RB_RESERVED3_END:RB_CONFIGID_END],
        isv_prod_id=_u16(raw, RB_CONFIGID_END),
        isv_svn=_u16(raw, RB_ISVPRODID_END),
        config_svn=_u16(raw, RB_ISVSVN_END),
        isv_family_id=raw[RB_RESERVED4_END:RB_ISVFAMILYID_END],
        report_data=raw[RB_ISVFAMILYID_END:RB_REPORTDATA_END],
    )


def _parse_td_body(raw: bytes, body_type: int) -> TdReportBody:
    ext: TdReport15Ex | None = None
    if body_type == BODY_TYPE_TD15EX:
        ext = TdReport15Ex(
            vm_id=raw[TD15_SIZE],
            td_id=raw[TDX_VMID_END:TDX_TDID_END],
            dev_info=raw[TDX_TDID_END:TDX_DEVINFO_END],
            init_service_td_hash=raw[TDX_DEVINFO_END:TDX_INIT_SERVTD_HASH_END],
            init_service_td_attributes=raw[TDX_INIT_SERVTD_HASH_END:TDX_INIT_SERVTD_ATTR_END],
            init_cpu_svn=raw[TDX_INIT_SERVTD_ATTR_END:TDX_INIT_CPUSVN_END],
            init_tee_tcb_svn=raw[TDX_INIT_CPUSVN_END:TDX_INIT_TEE_TCB_SVN_END],
            init_tee_fmspc=raw[TDX_INIT_TEE_TCB_SVN_END:TDX_INIT_TEE_FMSPC_END],
            cur_service_td_hash=raw[TDX_INIT_TEE_FMSPC_END:TDX_CUR_SERVTD_HASH_END],
            cur_service_td_attributes=raw[TDX_CUR_SERVTD_HASH_END:TDX_CUR_SERVTD_ATTR_END],
        )
    td15 = body_type in (BODY_TYPE_TD15, BODY_TYPE_TD15EX)
    return TdReportBody(
        body_type=body_type,
        tee_tcb_svn=raw[TD_TEE_TCB_SVN_START:TD_TEE_TCB_SVN_END],
        mr_seam=raw[TD_TEE_TCB_SVN_END:TD_MRSEAM_END],
        mr_signer_seam=raw[TD_MRSEAM_END:TD_MRSIGNERSEAM_END],
        seam_attributes=raw[TD_MRSIGNERSEAM_END:TD_SEAMATTRIBUTES_END],
        td_attributes=raw[TD_SEAMATTRIBUTES_END:TD_TDATTRIBUTES_END],
        xfam=raw[TD_TDATTRIBUTES_END:TD_XFAM_END],
        mr_td=raw[TD_XFAM_END:TD_MRTD_END],
        mr_config_id=raw[TD_MRTD_END:TD_MRCONFIGID_END],
        mr_owner=raw[TD_MRCONFIGID_END:TD_MROWNER_END],
        mr_owner_config=raw[TD_MROWNER_END:TD_MROWNERCONFIG_END],
        rtmr=(
            raw[TD_MROWNERCONFIG_END:TD_RTMR0_END],
            raw[TD_RTMR0_END:TD_RTMR1_END],
            raw[TD_RTMR1_END:TD_RTMR2_END],
            raw[TD_RTMR2_END:TD_RTMR3_END],
        ),
        report_data=raw[TD_RTMR3_END:TD_REPORTDATA_END],
        tee_tcb_svn2=raw[TD10_SIZE:TD_TEE_TCB_SVN2_END] if td15 else None,
        mr_service_td=raw[TD_TEE_TCB_SVN2_END:TD_MRSERVICETD_END] if td15 else None,
        ext=ext,
    )


def _parse_cert_data(raw: bytes, start: int, field: str, base: int) -> tuple[CertificationData, int]:
    """Read a (type u16, size u32, data) element at ``start``; return it and its end offset."""
    _need(raw, start, CERT_DATA_HEADER_SIZE, f"{field}.header", base)
    cert_type = _u16(raw, start)
    size = _u32(raw, start + 2)
    data_start = start + CERT_DATA_HEADER_SIZE
    if size > _MAX_NESTED:
        raise EvidenceParseError(
            f"{field}.size {size} exceeds {_MAX_NESTED}", field=f"{field}.size", offset=base + start + 2
        )
    _need(raw, data_start, size, f"{field}.data", base)
    if not 1 <= cert_type <= 7:
        raise EvidenceParseError(
            f"{field}.type {cert_type} is not a defined certification data type (1-7)",
            field=f"{field}.type",
            offset=base + start,
        )
    return CertificationData(
        cert_type, raw[data_start : data_start + size], base + data_start
    ), data_start + size


def _parse_qe_section(
    raw: bytes, start: int, field: str, base: int
) -> tuple[EnclaveReportBody, bytes, bytes, int]:
    """QE report, its signature and QE auth data ([QL3] Table 4 / [QL4] A.4.2)."""
    _need(raw, start, ENCLAVE_REPORT_SIZE, f"{field}.qe_report", base)
    qe_report_end = start + ENCLAVE_REPORT_SIZE
    qe_report = parse_enclave_report_body(raw[start:qe_report_end], base=base + start, name="qe_report")
    _need(raw, qe_report_end, QE_REPORT_SIG_SIZE, "qe_report_signature", base)
    sig_end = qe_report_end + QE_REPORT_SIG_SIZE
    _need(raw, sig_end, AUTH_DATA_LEN_SIZE, "qe_auth_data.size", base)
    auth_len = _u16(raw, sig_end)
    auth_start = sig_end + AUTH_DATA_LEN_SIZE
    _need(raw, auth_start, auth_len, "qe_auth_data", base)
    auth_end = auth_start + auth_len
    return qe_report, raw[qe_report_end:sig_end], raw[auth_start:auth_end], auth_end


def _parse_signature_data(raw: bytes, version: int, base: int) -> QuoteSignatureData:
    if len(raw) < SD_ATTEST_KEY_END:
        raise EvidenceParseError(
            f"signature_data: {len(raw)} bytes, shorter than signature + attestation key ({SD_ATTEST_KEY_END})",
            field="signature_data",
            offset=base,
        )
    quote_sig = raw[SD_QUOTE_SIG_START:SD_QUOTE_SIG_END]
    attestation_key = raw[SD_QUOTE_SIG_END:SD_ATTEST_KEY_END]
    if version == 3:
        qe_report, qe_sig, auth, end = _parse_qe_section(raw, SD_ATTEST_KEY_END, "signature_data", base)
        cert, end = _parse_cert_data(raw, end, "certification_data", base)
        if cert.cert_type == CERT_TYPE_QE_REPORT:
            raise EvidenceParseError(
                "certification_data.type 6 is not defined for quote v3",
                field="certification_data.type",
                offset=cert.offset - CERT_DATA_HEADER_SIZE,
            )
    else:
        outer, end = _parse_cert_data(raw, SD_ATTEST_KEY_END, "certification_data", base)
        if outer.cert_type != CERT_TYPE_QE_REPORT:
            raise EvidenceParseError(
                f"certification_data.type is {outer.cert_type}, quote v{version} requires 6 "
                "(QE report certification data)",
                field="certification_data.type",
                offset=base + SD_ATTEST_KEY_END,
            )
        inner_base = outer.offset
        data = outer.data
        qe_report, qe_sig, auth, inner_end = _parse_qe_section(
            data, 0, "qe_report_certification_data", inner_base
        )
        cert, inner_end = _parse_cert_data(
            data, inner_end, "qe_report_certification_data.certification_data", inner_base
        )
        if cert.cert_type == CERT_TYPE_QE_REPORT:
            raise EvidenceParseError(
                "nested certification data must not be type 6 again",
                field="qe_report_certification_data.certification_data.type",
                offset=cert.offset - CERT_DATA_HEADER_SIZE,
            )
        if inner_end != len(data):
            raise EvidenceParseError(
                f"qe_report_certification_data: {len(data) - inner_end} unparsed bytes after the nested "
                "certification data",
                field="qe_report_certification_data",
                offset=inner_base + inner_end,
            )
    if end != len(raw):
        raise EvidenceParseError(
            f"signature_data: declared {len(raw)} bytes but the structure ends after {end}",
            field="signature_data",
            offset=base + end,
        )
    return QuoteSignatureData(
        quote_signature=quote_sig,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        certification=cert,
    )


def parse_quote(raw: bytes) -> Quote:
    """Parse an SGX quote v3 or a TDX quote v4/v5 (ECDSA-256-with-P-256 attestation key only).

    Raises ``EvidenceParseError`` naming the field and offset on any structural problem.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EvidenceParseError("quote must be bytes", field="quote", offset=0)
    raw = bytes(raw)
    if len(raw) > MAX_QUOTE_SIZE:
        raise EvidenceParseError(
            f"quote is {len(raw)} bytes, limit {MAX_QUOTE_SIZE}", field="quote", offset=0
        )
    _need(raw, 0, HEADER_SIZE, "header", 0)
    version = _u16(raw, HDR_VERSION_START)
    ak_type = _u16(raw, HDR_VERSION_END)
    tee_type = _u32(raw, HDR_AK_TYPE_END)
    if version not in (3, 4, 5):
        raise EvidenceParseError(
            f"header.version {version} is not supported (3, 4, 5)", field="header.version", offset=0
        )
    if ak_type != ATTESTATION_KEY_TYPE_ECDSA_P256:
        raise EvidenceParseError(
            f"header.attestation_key_type {ak_type} is not supported (2: ECDSA-256-with-P-256)",
            field="header.attestation_key_type",
            offset=HDR_VERSION_END,
        )
    if tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
        raise EvidenceParseError(
            f"header.tee_type 0x{tee_type:08x} is neither SGX (0x0) nor TDX (0x81)",
            field="header.tee_type",
            offset=HDR_AK_TYPE_END,
        )
    if version == 3 and tee_type != TEE_TYPE_SGX:
        raise EvidenceParseError(
            f"header.reserved (tee_type) must be zero in quote v3, found 0x{tee_type:08x}",
            field="header.tee_type",
            offset=HDR_AK_TYPE_END,
        )
    header = QuoteHeader(
        version=version,
        attestation_key_type=ak_type,
        tee_type=tee_type,
        qe_svn=_u16(raw, HDR_TEE_TYPE_END),
        pce_svn=_u16(raw, HDR_QE_SVN_END),
        qe_vendor_id=raw[HDR_PCE_SVN_END:HDR_QE_VENDOR_ID_END],
        user_data=raw[HDR_QE_VENDOR_ID_END:HDR_USER_DATA_END],
    )

    # Body: v3/v4 imply the type from the TEE; v5 carries a descriptor ([QL4] "Quote Body Descriptor").
    if version == 5:
        _need(raw, HEADER_SIZE, 6, "body_descriptor", 0)
        body_type = _u16(raw, HEADER_SIZE)
        body_size = _u32(raw, HEADER_SIZE + 2)
        body_start = HEADER_SIZE + 6
        expected = _BODY_SIZES.get(body_type)
        if expected is None:
            raise EvidenceParseError(
                f"body_descriptor.type {body_type} is not supported (1-4)",
                field="body_descriptor.type",
                offset=HEADER_SIZE,
            )
        if body_size != expected:
            raise EvidenceParseError(
                f"body_descriptor.size {body_size} does not match body type {body_type} ({expected} bytes)",
                field="body_descriptor.size",
                offset=HEADER_SIZE + 2,
            )
    else:
        body_type = BODY_TYPE_SGX if tee_type == TEE_TYPE_SGX else BODY_TYPE_TD10
        body_size = _BODY_SIZES[body_type]
        body_start = HEADER_SIZE
    if (body_type == BODY_TYPE_SGX) != (tee_type == TEE_TYPE_SGX):
        raise EvidenceParseError(
            f"body type {body_type} does not fit header.tee_type 0x{tee_type:x}",
            field="body_descriptor.type",
            offset=HEADER_SIZE,
        )
    _need(raw, body_start, body_size, "body", 0)
    body_end = body_start + body_size
    body_raw = raw[body_start:body_end]
    body: EnclaveReportBody | TdReportBody
    if body_type == BODY_TYPE_SGX:
        body = parse_enclave_report_body(body_raw, base=body_start, name="body")
    else:
        body = _parse_td_body(body_raw, body_type)

    _need(raw, body_end, SIG_DATA_LEN_SIZE, "signature_data.size", 0)
    sig_len = _u32(raw, body_end)
    sig_start = body_end + SIG_DATA_LEN_SIZE
    _need(raw, sig_start, sig_len, "signature_data", 0)
    sig_end = sig_start + sig_len
    signature = _parse_signature_data(raw[sig_start:sig_end], version, sig_start)
    # Padding is unsigned: anything but zeros would give one quote many encodings.
    padding = len(raw) - sig_end
    if raw.count(0, sig_end) != padding:
        first = next(i for i in range(sig_end, len(raw)) if raw[i])
        raise EvidenceParseError(
            f"trailing_bytes: {padding} bytes follow the quote (which ends at {sig_end}) and only zero "
            f"padding may; byte {first} is 0x{raw[first]:02x}",
            field="trailing_bytes",
            offset=first,
        )
    return Quote(
        header=header,
        body=body,
        body_type=body_type,
        signed_data=raw[:body_end],
        signature=signature,
        trailing_size=padding,
        canonical=raw[:sig_end],
    )


def canonical_quote(raw: bytes) -> bytes:
    """``raw`` without its zero padding if it parses as a quote, else ``raw`` unchanged.

    For naming evidence (an audit record's digest) before, or whatever, the verification says:
    a quote and the same quote padded with zeros get one digest.
    """
    try:
        return parse_quote(raw).canonical
    except EvidenceParseError:
        return bytes(raw)
