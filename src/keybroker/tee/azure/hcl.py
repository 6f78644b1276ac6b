"""The Azure confidential VM HCL report: bytes to a frozen structure. No signature, no policy.

Layout (little-endian) as Azure's paravisor (HCL) writes it to vTPM NV index 0x01400001, read
from the ``az-snp-vtpm``/``az-tdx-vtpm`` crates (``hcl/mod.rs``) and checked on every corpus file:

* 0x000 header: "HCLA" u32, version u32 (1 or 2), report_size u32 (= 0x4D4 + variable data size),
  request_type u32 (2), status u32 (0), 3 reserved u32 (0).
* 0x020 the hardware report slot, 1184 bytes: an SEV-SNP ATTESTATION_REPORT (REPORT_DATA at 0x50), or
  a TDX TDREPORT (1024 bytes, REPORTDATA at 0x80) followed by zeros.
* 0x4C0 IGVM request data: data_size u32 (= 20 + variable data size), version u32 (1), report_type
  u32 (2 SNP, 4 TDX), hash_type u32 (1 SHA-256, 2 SHA-384, 3 SHA-512), variable_data_size u32.
* 0x4D4 the variable (runtime) data: UTF-8 JSON with the vTPM's keys (``HCLAkPub``, ``HCLEkPub`` as
  JWKs), ``vm-configuration`` and ``user-data``; then zero bytes to the end of the NV index.

The hardware report binds the runtime data: REPORT_DATA = H_hash_type(variable data), zero padded
to 64 bytes (:func:`expected_report_data`). Only ``variable_data_size`` bytes are hashed.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker import strictjson
from keybroker.errors import EvidenceParseError, InvalidInput

__all__ = ["HCL_SIZE", "HclReport", "expected_report_data", "parse_hcl_report"]

HCL_MAGIC: Final = b"HCLA"
HDR_SIZE: Final = 0x20
HW_REPORT_START: Final = HDR_SIZE
HW_REPORT_SIZE: Final = 0x4A0  # 1184: the SEV-SNP report size
HW_REPORT_END: Final = HW_REPORT_START + HW_REPORT_SIZE  # 0x4C0
IGVM_HDR_SIZE: Final = 20
VAR_DATA_START: Final = HW_REPORT_END + IGVM_HDR_SIZE  # 0x4D4
#: The vTPM NV index holding the report is 2600 bytes; more is refused.
HCL_SIZE: Final = 2600
TDREPORT_SIZE: Final = 1024
SNP_REPORT_DATA: Final = (0x50, 0x90)
# Intel TDX Module ABI, TDREPORT_STRUCT: REPORTMACSTRUCT (256 B; REPORTDATA at 128), TEE_TCB_INFO
# (239 B at 256), reserved, TDINFO_STRUCT (512 B at 512). The fields a TD quote body repeats:
TDREPORT_REPORT_DATA: Final = (0x80, 0xC0)
TDREPORT_FIELDS: Final = (
    ("tee_tcb_svn", 256 + 8, 256 + 24),
    ("mr_seam", 256 + 24, 256 + 72),
    ("mr_signer_seam", 256 + 72, 256 + 120),
    ("seam_attributes", 256 + 120, 256 + 128),
    ("td_attributes", 512, 520),
    ("xfam", 520, 528),
    ("mr_td", 528, 576),
    ("mr_config_id", 576, 624),
    ("mr_owner", 624, 672),
    ("mr_owner_config", 672, 720),
    ("rtmr0", 720, 768),
    ("rtmr1", 768, 816),
    ("rtmr2", 816, 864),
    ("rtmr3", 864, 912),
)
_REPORT_TYPES: Final[dict[int, Literal["snp", "tdx"]]] = {2: "snp", 4: "tdx"}
_HASH_TYPES: Final = {1: "sha256", 2: "sha384", 3: "sha512"}
_MIN_RSA_BITS: Final = 2048


@dataclass(frozen=True, slots=True)
class HclReport:
    """A parsed, **unverified** HCL report."""

    raw: bytes
    version: int
    report_type: Literal["snp", "tdx"]
    hash_type: str
    #: The 1184-byte hardware slot: the SNP report, or the TDREPORT and zeros.
    hw_report: bytes
    #: REPORT_DATA / REPORTDATA as the (unverified) hardware report in the slot holds it.
    hw_report_data: bytes
    #: Exactly the hashed bytes: the runtime JSON.
    runtime_data: bytes
    runtime: dict[str, Any]
    ak_public: rsa.RSAPublicKey
    ek_public: rsa.RSAPublicKey | None

    @property
    def tdreport(self) -> bytes:
        return self.hw_report[:TDREPORT_SIZE]

    @property
    def user_data(self) -> str | None:
        value = self.runtime.get("user-data")
        return value if isinstance(value, str) else None

    @property
    def vm_configuration(self) -> dict[str, Any]:
        value = self.runtime.get("vm-configuration")
        return value if isinstance(value, dict) else {}


def expected_report_data(report: HclReport) -> bytes:
    """The REPORT_DATA the hardware report must hold: H(runtime data), zero padded to 64 bytes."""
    return hashlib.new(report.hash_type, report.runtime_data).digest().ljust(64, b"\x00")


def _fail(detail: str, field: str, offset: int | None = None) -> EvidenceParseError:
    return EvidenceParseError(f"HCL report {field}: {detail}", field=f"hcl_report.{field}", offset=offset)


def _b64url_int(value: Any, field: str) -> int:
    if not isinstance(value, str) or not 0 < len(value) <= 1024 or "=" in value:
        raise _fail("not an unpadded base64url string", field)
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise _fail("not base64url", field) from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != value:
        raise _fail("not canonical base64url", field)
    return int.from_bytes(raw, "big")


def _rsa_jwk(keys: list[Any], kid: str, required: bool) -> rsa.RSAPublicKey | None:
    found = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]
    if not found:
        if required:
            raise _fail(f"no {kid} key in the runtime data", "runtime.keys")
        return None
    if len(found) > 1:
        raise _fail(f"{kid} appears {len(found)} times", "runtime.keys")
    jwk = found[0]
    if jwk.get("kty") != "RSA":
        raise _fail(f"{kid} is not an RSA key (kty {jwk.get('kty')!r})", f"runtime.keys.{kid}.kty")
    n = _b64url_int(jwk.get("n"), f"runtime.keys.{kid}.n")
    e = _b64url_int(jwk.get("e"), f"runtime.keys.{kid}.e")
    if n.bit_length() < _MIN_RSA_BITS or e < 3 or e % 2 == 0:
        raise _fail(f"{kid} is a {n.bit_length()}-bit modulus with exponent {e}", f"runtime.keys.{kid}")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise _fail(f"{kid} is not a valid RSA key ({exc})", f"runtime.keys.{kid}") from None


def parse_hcl_report(raw: bytes) -> HclReport:
    """Parse an HCL report (the vTPM NV index, up to 2600 bytes: zeros may follow ``report_size``)."""
    if len(raw) > HCL_SIZE:
        raise _fail(f"{len(raw)} bytes, at most {HCL_SIZE}", "size", 0)
    if len(raw) < VAR_DATA_START:
        raise _fail(f"{len(raw)} bytes, the fixed part is {VAR_DATA_START}", "size", 0)
    if raw[:4] != HCL_MAGIC:
        raise _fail(f"magic {raw[:4].hex()} is not 'HCLA'", "signature", 0)
    version, report_size, request_type, status, *reserved = struct.unpack_from("<7I", raw, 4)
    if version not in (1, 2):
        raise _fail(f"version {version}, expected 1 or 2", "version", 4)
    if request_type != 2:
        raise _fail(f"request_type {request_type}, expected 2", "request_type", 12)
    if status != 0:
        raise _fail(f"status {status}, expected 0", "status", 16)
    if any(reserved):
        raise _fail("reserved words are not zero", "reserved", 20)
    data_size, igvm_version, report_type, hash_type, var_size = struct.unpack_from("<5I", raw, HW_REPORT_END)
    if igvm_version != 1:
        raise _fail(
            f"IGVM request data version {igvm_version}, expected 1", "igvm.version", HW_REPORT_END + 4
        )
    kind = _REPORT_TYPES.get(report_type)
    if kind is None:
        raise _fail(
            f"report_type {report_type}, expected 2 (SNP) or 4 (TDX)", "igvm.report_type", HW_REPORT_END + 8
        )
    hash_name = _HASH_TYPES.get(hash_type)
    if hash_name is None:
        raise _fail(f"hash_type {hash_type}, expected 1, 2 or 3", "igvm.hash_type", HW_REPORT_END + 12)
    if data_size != IGVM_HDR_SIZE + var_size:
        raise _fail(
            f"data_size {data_size} is not 20 + variable_data_size {var_size}",
            "igvm.data_size",
            HW_REPORT_END,
        )
    if report_size != VAR_DATA_START + var_size or report_size > len(raw):
        detail = f"report_size {report_size} is not {VAR_DATA_START} + {var_size} within {len(raw)} bytes"
        raise _fail(detail, "report_size", 8)
    tail = raw[report_size:]
    if tail.count(0) != len(tail):
        raise _fail("non-zero bytes after the report", "padding", report_size)
    hw = raw[HW_REPORT_START:HW_REPORT_END]
    if kind == "tdx":
        if hw[TDREPORT_SIZE:].count(0) != HW_REPORT_SIZE - TDREPORT_SIZE:
            raise _fail(
                "bytes after the 1024-byte TDREPORT are not zero",
                "hw_report",
                HW_REPORT_START + TDREPORT_SIZE,
            )
        report_data = hw[TDREPORT_REPORT_DATA[0] : TDREPORT_REPORT_DATA[1]]
    else:
        report_data = hw[SNP_REPORT_DATA[0] : SNP_REPORT_DATA[1]]
    runtime_data = raw[VAR_DATA_START:report_size]
    try:
        runtime = strictjson.loads(runtime_data, what="the HCL runtime data", field="hcl_report.runtime")
    except InvalidInput as exc:
        raise _fail(exc.detail, "runtime", VAR_DATA_START) from None
    if not isinstance(runtime, dict) or not isinstance(runtime.get("keys"), list):
        raise _fail("not a JSON object with a 'keys' list", "runtime", VAR_DATA_START)
    ak = _rsa_jwk(runtime["keys"], "HCLAkPub", required=True)
    assert ak is not None
    return HclReport(
        raw=raw,
        version=version,
        report_type=kind,
        hash_type=hash_name,
        hw_report=hw,
        hw_report_data=report_data,
        runtime_data=runtime_data,
        runtime=runtime,
        ak_public=ak,
        ek_public=_rsa_jwk(runtime["keys"], "HCLEkPub", required=False),
    )
